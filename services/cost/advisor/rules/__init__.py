"""Built-in advisor rules; importing this package registers them."""

from services.cost.advisor.registry import register
from services.cost.advisor.rules.consolidate import Consolidate
from services.cost.advisor.rules.cut_max_tokens import CutMaxTokens
from services.cost.advisor.rules.quantize import Quantize
from services.cost.advisor.rules.scale_to_zero import ScaleToZero
from services.cost.advisor.rules.smaller_model import SmallerModel

for _rule in (Consolidate(), Quantize(), ScaleToZero(), SmallerModel(), CutMaxTokens()):
    register(_rule)

__all__ = ["Consolidate", "CutMaxTokens", "Quantize", "ScaleToZero", "SmallerModel"]
