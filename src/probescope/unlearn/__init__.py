"""Unlearning and the attacks that show whether the model really forgot (see docs/unlearning.md).

    from probescope.unlearn import UnlearnRunConfig, UnlearnConfig, run_unlearn, AuditConfig, run_audit
    m = run_unlearn(UnlearnRunConfig(model="smollm2-135m", forget="capitals", out="runs/rmu"))
    a = run_audit(AuditConfig(run="runs/rmu"))

Methods (one registry, `METHODS`): rmu (representation misdirection, Li et al. 2024), rmu-adv (RMU with the
one-direction ablation attack in the loop), ga (gradient ascent + retain LM loss), npo (negative preference
optimisation + retain LM loss).

The fictitious-entity organism (`EntityOrganismConfig`, `run_entity_organism`; `probescope unlearn organism`)
teaches a model facts it never knew and writes the forget/retain files to unlearn them (loaded on first use; its
entities come from the data registry, tasks/entities.py).
"""

from .methods import METHODS, get_method, register
from .runner import AuditConfig, UnlearnRun, UnlearnRunConfig, load_subject, run_audit, run_unlearn
from .score import acc_summary, cloze_correct, evaluate, recovered, wilson
from .subjects import ClozeItem, antonyms, capitals, check_sets, read_subject
from .train import UnlearnConfig, apply_weights, unlearn

__all__ = ["METHODS", "AuditConfig", "ClozeItem", "UnlearnConfig", "UnlearnRun", "UnlearnRunConfig", "acc_summary",
           "antonyms", "apply_weights", "capitals", "check_sets", "cloze_correct", "evaluate", "get_method", "load_subject",
           "read_subject", "recovered", "register", "run_audit", "run_unlearn", "unlearn", "wilson",
           "EntityOrganismConfig", "run_entity_organism"]


def __getattr__(name: str):
    if name in ("EntityOrganismConfig", "run_entity_organism"):
        from . import organism

        return getattr(organism, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
