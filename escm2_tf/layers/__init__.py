"""The ESCM2 network's layers, one a module, built for throughput on CPUs.

``embedding``: ``FusedEmbedding``, all fields in one table. ``mmoe``:
``MMoE``, batched over experts. ``towers``: ``TaskTowers``, batched over
tasks. ``heads``: ``Heads``, the logits turned into the named outputs.
``common``: the seeds, initialiser and base class MMoE and the towers share.
"""

from escm2_tf.layers.common import offset_seed
from escm2_tf.layers.common import stacked_glorot
from escm2_tf.layers.embedding import FusedEmbedding
from escm2_tf.layers.embedding import align_weights
from escm2_tf.layers.embedding import pool_segments
from escm2_tf.layers.heads import Heads
from escm2_tf.layers.mmoe import MMoE
from escm2_tf.layers.towers import TaskTowers
