"""Target words across layers: the probability (and rank) of the five IQA levels, excellent ... bad, at every layer
at the decision position, where the level word is chosen.

    python examples/target_words.py
    python examples/target_words.py --model checkpoints/llava-1.5-7b-hf --image koniq/123.jpg
"""

import _common

from vlm_lens import plot

args = _common.arguments(__doc__.splitlines()[0]).parse_args()
t = _common.trace(args)
position = _common.decision(t)  # where the quality level is chosen
table = t.lens_targets(_common.LEVELS, positions=[position])
print(table.pivot(index="layer", columns="target", values="prob")[_common.LEVELS].round(4).to_string())
_common.save(args, plot.target_words(t, _common.LEVELS, position), "target_words")
_common.save(args, plot.target_words(t, _common.LEVELS, position, value="rank"), "target_words_rank")
