"""What the zoo adds to the layers below it: ``vl.load("zoo:NAME")`` loads a shipped checkpoint.

Imported by ``import vlm_lens`` on first use (see docs/architecture.md, "Registrations").
"""

from ..tracing.loading import register_source
from . import checkpoint_path

register_source("zoo", checkpoint_path)
