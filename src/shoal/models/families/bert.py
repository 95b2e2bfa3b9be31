"""BERT (and checkpoints built on it, such as MiniLM): the students' own layout."""

from shoal.models.families.base import BERT_LAYER, Family, bert_like_config

BERT = Family(
    model_type="bert",
    backbone="bert",
    layers="encoder.layer",
    layer_names=BERT_LAYER,
    head={"pooler": "bert.pooler.dense", "classifier": "classifier"},
    head_activation="tanh",
    positions="absolute",
    config=bert_like_config,
)
