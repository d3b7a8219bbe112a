"""The steering wing's built-in behaviour ("sentiment"): contrastive pairs, prompts, word lists and the word-list score,
generated in tasks/sentiment_pairs.py (the data registry) and re-exported here for the wing and old callers."""

from ..tasks.sentiment_pairs import (  # noqa: F401
    NEGATIVE, NEGATIVE_WORDS, NEUTRAL_REQUEST, NEUTRAL_TEXTS_TEMPLATES, OBJECTS, POSITIVE, POSITIVE_WORDS, TOPICS,
    chat_prompt, eval_prompts, eval_requests, neutral_texts, positive_answers, sentiment_pairs, sentiment_score,
    split_topics,
)
