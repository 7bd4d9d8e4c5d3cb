"""The HTML report of one trace: tokens coloured by segment, click a token for its top-k at every layer, all the
figures; one self-contained file.

    python examples/report.py
    python examples/report.py --model checkpoints/llava-1.5-7b-hf --image koniq/123.jpg
"""

import _common

from vlm_lens.report import write_report

args = _common.arguments(__doc__.splitlines()[0]).parse_args()
t = _common.trace(args)
path = write_report(t, f"{args.out}/report.html", targets=_common.LEVELS)
print(f"wrote {path}: open it in a browser")
