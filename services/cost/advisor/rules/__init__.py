"""The built-in advisor rules, listed in one place (registry.py builds the registry from them)."""

from services.cost.advisor.rules.consolidate import Consolidate
from services.cost.advisor.rules.cut_max_tokens import CutMaxTokens
from services.cost.advisor.rules.quantize import Quantize
from services.cost.advisor.rules.scale_to_zero import ScaleToZero
from services.cost.advisor.rules.smaller_model import SmallerModel

BUILTIN_RULES = (Consolidate(), Quantize(), ScaleToZero(), SmallerModel(), CutMaxTokens())

__all__ = ["BUILTIN_RULES", "Consolidate", "CutMaxTokens", "Quantize", "ScaleToZero", "SmallerModel"]
