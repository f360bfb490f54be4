"""cds-engine: clinical decision support from declarative rule packs.

Public API::

    from cds_engine import Engine, PatientFacts
    engine = Engine.from_dir("rules")
    alerts = engine.evaluate(PatientFacts.model_validate(data))
"""

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.errors import PackLoadError

__all__ = ["Alert", "Engine", "PackLoadError", "PatientFacts"]
__version__ = "0.1.0"
