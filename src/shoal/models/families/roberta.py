"""RoBERTa and XLM-RoBERTa: BERT's layers; positions counted from the pad id + 1 (fairseq),
one segment, and a head of dense + tanh + out_proj with no pooler."""

from shoal.models.families.base import BERT_LAYER, Family, bert_like_config


def _family(model_type: str, backbone: str) -> Family:
    return Family(
        model_type=model_type,
        backbone=backbone,
        layers="encoder.layer",
        layer_names=BERT_LAYER,
        head={"pooler": "classifier.dense", "classifier": "classifier.out_proj"},
        head_activation="tanh",
        positions="padded",
        config=bert_like_config,
    )


ROBERTA = _family("roberta", "roberta")
XLM_ROBERTA = _family("xlm-roberta", "roberta")
