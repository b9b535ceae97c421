# lm-eval's own preprocessing for HellaSwag and WinoGrande, imported (not re-written) so that the
# comparison tests tyr against the harness's code.
from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401
    doc_to_choice,
    doc_to_target,
    doc_to_text,
)
