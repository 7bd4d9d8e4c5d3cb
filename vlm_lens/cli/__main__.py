"""``python -m vlm_lens.cli``: the same as the ``vlm-lens`` command."""

from . import main

raise SystemExit(main())
