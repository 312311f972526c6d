"""Writes simulated impressions as Ali-CCP or PaddleRec text, atomically.

Feature ids share one global id space, as in the real release: every field owns
a disjoint range (in ``schema.FIELD_NAMES`` order, starting at 1). A user's
common features (``schema.COMMON_FIELDS``, about 500 behaviour entries) are
formatted once and reused by all of the user's requests; only the
``common_feature_index`` differs between them.
"""

import contextlib
import hashlib
import os
from typing import Iterator, Sequence, TextIO

import numpy as np

from escm2_tf.formats import aliccp
from escm2_tf.formats import paddlerec
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf.simulator import traffic as simulator_traffic
from escm2_tf.simulator import world as sw

_BLOCK = 1 << 16  # Lines formatted per write.
# Field order within rows, as in real Ali-CCP rows (PaddleRec's demo files):
# item intentions and brand, position, item, category, shop, then crosses;
# users' profile fields, then their behaviour. A reader that drops the first
# feature, as PaddleRec's does, thus loses an intention, not the item id.
_USER_ORDER = ("121", "122", "101", "124", "125", "126", "127", "128", "129",
               "150_14", "127_14", "109_14", "110_14")

Triple = tuple[str, int, float]


def field_sizes(world: sw.World) -> dict[str, int]:
  """How many local ids each schema field has."""
  sizes = dict(world.sizes)
  for field, entity in sw.BEHAVIOUR_ENTITY.items():
    sizes[field] = world.sizes[entity]
    sizes[sw.CROSS_OF_BEHAVIOUR[field]] = (sw.CROSS_BUCKETS
                                           * world.sizes[entity])
  return {f: sizes[f] for f in schema.FIELD_NAMES}


def id_bases(world: sw.World) -> dict[str, int]:
  """Global id of each field's local id 0; the ranges are disjoint."""
  sizes = field_sizes(world)
  starts = np.cumsum([1] + [sizes[f] for f in schema.FIELD_NAMES])
  return {f: int(s) for f, s in zip(schema.FIELD_NAMES, starts)}


def request_indexes(seed: int, split: str, num: int) -> list[str]:
  """md5-like ``common_feature_index`` strings, unique per seed and split."""
  return [hashlib.md5(f"{seed}/{split}/{r}".encode()).hexdigest()
          for r in range(num)]


class Featurizer:
  """Turns users and impressions of a world into Ali-CCP feature triples."""

  def __init__(self, world: sw.World):
    self._world = world
    self._base = id_bases(world)
    ids = {f: (world.item_fields[f] + self._base[f]).tolist()
           for f in ("206", "207", "216")}
    ids["205"] = (np.arange(world.sizes["205"]) + self._base["205"]).tolist()
    intentions = [[t + self._base["210"] for t in row if t >= 0]
                  for row in world.item_intentions.tolist()]
    # Item features never change: lists per item, shared by all its rows.
    self._item_head = [[("210", t, 1.0) for t in ts] + [("216", b, 1.0)]
                       for ts, b in zip(intentions, ids["216"])]
    self._item_tail = [[("205", i, 1.0), ("206", c, 1.0), ("207", s, 1.0)]
                       for i, c, s in zip(ids["205"], ids["206"], ids["207"])]
    self._positions = [[("301", self._base["301"] + p, 1.0)]
                       for p in range(world.sizes["301"])]

  def user_items(self, user: int) -> list[Triple]:
    """The common row of a user: ``schema.COMMON_FIELDS`` in real order."""
    world, items = self._world, []
    for field in _USER_ORDER:
      base = self._base[field]
      if field in world.behaviour:
        behaviour = world.behaviour[field]
        weights = np.round(np.log1p(behaviour.user_counts(user)), 5)
        items.extend(zip([field] * len(weights),
                         (behaviour.local_ids(user) + base).tolist(),
                         weights.tolist()))
      elif field == "101":
        items.append((field, base + user, 1.0))
      else:
        items.append((field, base + int(world.user_profile[field][user]), 1.0))
    return items

  def _cross_ids(self, imp: simulator_traffic.Impressions, block: slice,
                 field: str) -> np.ndarray:
    """Global cross ids (entity, count bucket) of a block; 0 = no overlap."""
    entity = sw.BEHAVIOUR_ENTITY[field]
    item = imp.item[block]
    local = (self._world.item_intentions[item] if field == "150_14"
             else self._world.item_fields[entity][item])
    counts = imp.overlap[field][block]
    ids = (self._base[sw.CROSS_OF_BEHAVIOUR[field]] + local * sw.CROSS_BUCKETS
           + np.minimum(counts, sw.CROSS_BUCKETS) - 1)
    return np.where(counts > 0, ids, 0)

  def sample_items(self, imp: simulator_traffic.Impressions,
                   block: slice) -> list[list[Triple]]:
    """Impression features: ``schema.SAMPLE_FIELDS`` in real order."""
    crosses: list[list[Triple]] = [[] for _ in range(block.stop - block.start)]
    # Only overlapping impressions carry crosses: loop over those alone.
    for field in sw.BEHAVIOUR_ENTITY:
      cross = sw.CROSS_OF_BEHAVIOUR[field]
      ids = self._cross_ids(imp, block, field)
      rows = np.nonzero(ids)[0]
      for k, gid in zip(rows.tolist(), ids[ids != 0].tolist()):
        crosses[k].append((cross, gid, 1.0))
    return [self._item_head[item] + self._positions[pos]
            + self._item_tail[item] + extra
            for item, extra, pos in zip(imp.item[block].tolist(), crosses,
                                        imp.position[block].tolist())]


def _blocks(num: int) -> Iterator[slice]:
  for start in range(0, num, _BLOCK):
    yield slice(start, min(num, start + _BLOCK))


def _write_lines(out: TextIO, lines: Sequence[str]) -> None:
  if lines:
    out.write("\n".join(lines) + "\n")


def sample_id_prefix(seed: int, split: str) -> str:
  """What precedes the row number (from 1) in the sample ids of a split.

  Ids are thus unique across splits and seeds: the ground truth of one split
  or seed shares no id with the data of another, so it cannot be joined to
  it. (Real Ali-CCP files number their rows 1..n in every split.)
  """
  return f"{split}-{seed}-"


def write_ground_truth(out: TextIO, truth: dict[str, np.ndarray],
                       id_prefix: str) -> None:
  """Writes ``layout.GROUND_TRUTH_HEADER`` rows, sample ids ``id_prefix``+k."""
  out.write(",".join(layout.GROUND_TRUTH_HEADER) + "\n")
  columns = zip(truth["p_click"].tolist(), truth["p_conversion"].tolist(),
                truth["conversion_counterfactual"].tolist(),
                truth["click"].tolist(), truth["conversion"].tolist())
  _write_lines(out, [f"{id_prefix}{k},{pc:.8g},{pv:.8g},{cf},{c},{v}"
                     for k, (pc, pv, cf, c, v) in enumerate(columns, start=1)])


def write_aliccp(featurizer: Featurizer, imp: simulator_traffic.Impressions,
                 labels: dict[str, np.ndarray], indexes: Sequence[str],
                 skeleton: TextIO, common: TextIO,
                 user_text: dict[int, str], id_prefix: str) -> None:
  """Writes a split's skeleton and common rows, grouped by request.

  Args:
    id_prefix: Precedes the row number in each sample id.
    user_text: A user's common line after its index, shared by all splits:
      the index is all that differs between a user's requests, so the long
      rest is formatted once per user.
  """
  for index, user in zip(indexes, imp.request_user.tolist()):
    if user not in user_text:
      line = aliccp.format_common_line("-", featurizer.user_items(user))
      user_text[user] = line.split(",", 1)[1]
  _write_lines(common, [f"{index},{user_text[user]}" for index, user
                        in zip(indexes, imp.request_user.tolist())])
  row_index = np.repeat(np.arange(len(indexes)), imp.request_size)
  for block in _blocks(len(imp.item)):
    rows = featurizer.sample_items(imp, block)
    _write_lines(skeleton, [
        aliccp.format_skeleton_line(f"{id_prefix}{k + 1}", c, v, indexes[r],
                                    items)
        for k, c, v, r, items in zip(
            range(block.start, block.stop), labels["click"][block].tolist(),
            labels["conversion"][block].tolist(),
            row_index[block].tolist(), rows)])


def write_paddlerec(featurizer: Featurizer, imp: simulator_traffic.Impressions,
                    labels: dict[str, np.ndarray], out: TextIO,
                    vocabulary: dict[int, int],
                    user_text: dict[int, str], id_prefix: str) -> None:
  """Writes PaddleRec lines: impression features, then the user's.

  Args:
    vocabulary: Raw global id to PaddleRec gid, in first-appearance order
      from 1; shared by all splits and extended here.
    user_text: A user's PaddleRec tokens, formatted once per user (they
      repeat on every line of the user, as in PaddleRec's files).
  """
  def gid(raw: int) -> int:
    return vocabulary.setdefault(raw, len(vocabulary) + 1)

  for block in _blocks(len(imp.item)):
    lines = []
    for k, c, v, user, items in zip(
        range(block.start, block.stop), labels["click"][block].tolist(),
        labels["conversion"][block].tolist(), imp.user[block].tolist(),
        featurizer.sample_items(imp, block)):
      line = paddlerec.format_paddlerec_line(
          f"{id_prefix}{k + 1}", c, v,
          [(f, gid(raw)) for f, raw, _ in items])
      if user not in user_text:
        pairs = [(f, gid(raw)) for f, raw, _ in featurizer.user_items(user)]
        user_text[user] = paddlerec.format_paddlerec_line(
            "-", 0, 0, pairs).split(",", 3)[3]
      lines.append(f"{line},{user_text[user]}")
    _write_lines(out, lines)


@contextlib.contextmanager
def atomic_files(output_dir: str, names: Sequence[str]):
  """Opens temporary files for ``names``; renames all of them on success.

  On any error the temporary files are deleted, so a final name only ever
  holds a complete file.
  """
  with contextlib.ExitStack() as stack:
    yield {name: stack.enter_context(
        layout.atomic_open(os.path.join(output_dir, name))) for name in names}
