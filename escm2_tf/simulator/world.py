"""The simulated Ali-CCP world: the users and items that train and test share.

The catalogue has categories (Zipf popularity); every shop, brand, intention
and item belongs to one category, and an item also has a price tier and two
correlated latent qualities (for clicks and for conversions). Users have a
profile, a taste (a sparse distribution over categories) and a behaviour
history, the ``*_14`` fields: entities of the categories they drew from their
taste or from global popularity, each with its count. Ids are local to their
field here; ``simulator_io`` maps them to one global id space.
"""

import dataclasses

import numpy as np

# Cardinalities of the profile fields in the Ali-CCP release.
PROFILE_CARDINALITY = {"121": 98, "122": 14, "124": 3, "125": 8, "126": 4,
                       "127": 4, "128": 3, "129": 5}
# Share of the mean behaviour length per behaviour field, as in real rows.
BEHAVIOUR_SHARE = {"109_14": 0.12, "110_14": 0.40, "127_14": 0.24,
                   "150_14": 0.24}
# Each behaviour field lists entities of this item-side field.
BEHAVIOUR_ENTITY = {"109_14": "206", "110_14": "207", "127_14": "216",
                    "150_14": "210"}
# Behaviour counts 1, 2, 3 and 4+ give the user-item crosses 4 ids per entity.
CROSS_BUCKETS = 4
CROSS_OF_BEHAVIOUR = {"109_14": "508", "110_14": "509", "127_14": "702",
                      "150_14": "853"}
MAX_ITEM_INTENTIONS = 10
NUM_TASTES = 32
PRICE_TIERS = 3

# Behaviour draws per distinct entry wanted (repeats turn into counts), tuned
# so that the default world's users average about behaviour_length entries.
_DRAWS_PER_ENTRY = {"109_14": 2.0, "110_14": 1.2, "127_14": 1.2,
                    "150_14": 1.17}
_TASTE_SHARE = 0.7  # Behaviour draws from the user's taste, else global.
QUALITY_CORRELATION = 0.6


@dataclasses.dataclass(frozen=True)
class Behaviour:
  """One behaviour field of every user, as sorted keys ``user * size + id``."""
  size: int
  keys: np.ndarray
  counts: np.ndarray
  offsets: np.ndarray  # offsets[u]:offsets[u + 1] are user u's entries.

  def local_ids(self, user: int) -> np.ndarray:
    entries = self.keys[self.offsets[user]:self.offsets[user + 1]]
    return entries - user * self.size

  def user_counts(self, user: int) -> np.ndarray:
    return self.counts[self.offsets[user]:self.offsets[user + 1]]

  def lookup(self, users: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The behaviour count of each (user, id) pair; 0 where absent or id < 0."""
    keys = users.astype(np.int64) * self.size + ids
    pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
    found = (self.keys[pos] == keys) & (ids >= 0)
    return np.where(found, self.counts[pos], 0)


@dataclasses.dataclass(frozen=True)
class ConversionMixing:
  """How a conversion logit mixes the click's interest with its own part.

  Attributes:
    correlation: Weight ``c`` of the standardised click interest; the own
      part gets ``sqrt(1 - c²)``.
    interest_mean: Mean of the click interest on the calibration sample.
    interest_std: Its standard deviation there.
    own_mean: Mean of the conversion-only logit there.
    own_std: Its standard deviation there.
    scale: Standard deviation of the default conversion logit there, kept
      so that the mix is as spread as the default.
  """
  correlation: float
  interest_mean: float
  interest_std: float
  own_mean: float
  own_std: float
  scale: float


@dataclasses.dataclass(frozen=True)
class World:
  """Users and items; ``simulator_traffic.calibrate`` sets the intercepts."""
  sizes: dict[str, int]
  item_fields: dict[str, np.ndarray]  # "206", "207", "216": [items].
  item_intentions: np.ndarray          # [items, MAX_ITEM_INTENTIONS], -1 pad.
  item_popularity: np.ndarray
  item_click_quality: np.ndarray
  item_conversion_quality: np.ndarray
  item_price_tier: np.ndarray
  items_by_category: tuple[np.ndarray, np.ndarray]  # (items, offsets).
  user_profile: dict[str, np.ndarray]
  user_activity: np.ndarray
  user_click_bias: np.ndarray
  user_conversion_bias: np.ndarray
  behaviour: dict[str, Behaviour]
  click_intercept: float = 0.0
  conversion_intercept: float = 0.0
  # None: the default conversion logit (simulator_traffic).
  conversion_mixing: ConversionMixing | None = None
  # Per user, in logit units, added to both true logits; None: no intent.
  user_intent: np.ndarray | None = None


def _group_by(values: np.ndarray, num_groups: int):
  """Members sorted by group, and offsets of each group into them."""
  order = np.argsort(values, kind="stable")
  offsets = np.searchsorted(values[order], np.arange(num_groups + 1))
  return order, offsets


def pick_member(groups: tuple[np.ndarray, np.ndarray], group: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
  """One uniformly chosen member of each requested group."""
  members, offsets = groups
  start, count = offsets[group], offsets[group + 1] - offsets[group]
  return members[start + (rng.random(len(group)) * count).astype(np.int64)]


def _categories_of(num_entities: int, popularity: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
  """A category per entity; every category gets at least one entity."""
  num_categories = len(popularity)
  first = rng.permutation(num_categories)
  rest = rng.choice(num_categories, num_entities - num_categories, p=popularity)
  return rng.permutation(np.concatenate([first, rest]))


def _zipf(size: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
  weights = 1.0 / (np.arange(size) + 10.0) ** exponent
  return rng.permutation(weights / weights.sum())


def _taste_sampler(popularity: np.ndarray, rng: np.random.Generator):
  """Samples categories from NUM_TASTES sparse taste distributions."""
  num_categories = len(popularity)
  # Sparse tastes that still favour the popular categories.
  dists = rng.dirichlet(0.1 * num_categories * popularity, NUM_TASTES)
  cdf = np.cumsum(dists, axis=1)
  cdf[:, -1] = 1.0
  flat = (np.arange(NUM_TASTES)[:, None] + cdf).ravel()

  def sample(taste: np.ndarray) -> np.ndarray:
    found = np.searchsorted(flat, taste + rng.random(len(taste)), side="right")
    return np.minimum(found - taste * num_categories, num_categories - 1)
  return sample


def _behaviour(field: str, sizes: dict[str, int], draws: np.ndarray,
               taste: np.ndarray, sample_taste, category_pop: np.ndarray,
               entities: tuple[np.ndarray, np.ndarray] | None,
               rng: np.random.Generator) -> Behaviour:
  """Draws behaviour events per user; distinct entities keep their counts."""
  users = np.repeat(np.arange(len(draws), dtype=np.int64), draws)
  categories = np.where(
      rng.random(len(users)) < _TASTE_SHARE, sample_taste(taste[users]),
      rng.choice(len(category_pop), len(users), p=category_pop))
  ids = (categories if entities is None
         else pick_member(entities, categories, rng))
  size = sizes[BEHAVIOUR_ENTITY[field]]
  keys, counts = np.unique(users * size + ids, return_counts=True)
  offsets = np.searchsorted(keys, np.arange(len(draws) + 1) * size)
  return Behaviour(size, keys, counts.astype(np.int64), offsets)


def _build_items(config, sizes: dict[str, int], category_pop: np.ndarray,
                 rng: np.random.Generator) -> dict:
  """Item fields, intentions and qualities; entities grouped by category."""
  num_items = config.num_items
  owner = {f: _categories_of(sizes[f], category_pop, rng)
           for f in ("205", "207", "216", "210")}
  groups = {f: _group_by(owner[f], config.num_categories)
            for f in ("207", "216", "210")}
  category = owner["205"]
  intentions = np.stack([pick_member(groups["210"], category, rng)
                         for _ in range(MAX_ITEM_INTENTIONS)], axis=1)
  intentions.sort(axis=1)
  count = rng.integers(1, MAX_ITEM_INTENTIONS + 1, num_items)
  repeated = np.concatenate([np.zeros((num_items, 1), bool),
                             intentions[:, 1:] == intentions[:, :-1]], axis=1)
  drop = repeated | (np.arange(MAX_ITEM_INTENTIONS) >= count[:, None])
  click_quality = rng.standard_normal(num_items)
  return {
      "groups": groups,
      "item_fields": {"206": category,
                      "207": pick_member(groups["207"], category, rng),
                      "216": pick_member(groups["216"], category, rng)},
      "item_intentions": np.where(drop, -1, intentions),
      "item_popularity": _zipf(num_items, 0.8, rng),
      "item_click_quality": click_quality,
      "item_conversion_quality": (
          QUALITY_CORRELATION * click_quality
          + np.sqrt(1 - QUALITY_CORRELATION ** 2)
          * rng.standard_normal(num_items)),
      "item_price_tier": rng.integers(0, PRICE_TIERS, num_items),
      "items_by_category": _group_by(category, config.num_categories),
  }


def _build_users(config, sizes: dict[str, int], category_pop: np.ndarray,
                 groups: dict, rng: np.random.Generator) -> dict:
  """User profiles, behaviour histories and response biases."""
  num_users = config.num_users
  taste = rng.integers(0, NUM_TASTES, num_users)
  profile = {f: rng.integers(0, n, num_users)
             for f, n in PROFILE_CARDINALITY.items()}
  # The profile category mostly reveals the taste, as a real profile would.
  profile["121"] = np.where(rng.random(num_users) < 0.8, taste, profile["121"])
  activity = rng.lognormal(0.0, 0.5, num_users)
  history = rng.lognormal(-0.125, 0.5, num_users)  # Mean 1.
  sample_taste = _taste_sampler(category_pop, rng)
  behaviour = {}
  for field, share in BEHAVIOUR_SHARE.items():
    mean_draws = config.behaviour_length * share * _DRAWS_PER_ENTRY[field]
    draws = np.maximum(1, np.rint(history * mean_draws)).astype(np.int64)
    entity = BEHAVIOUR_ENTITY[field]
    behaviour[field] = _behaviour(
        field, sizes, draws, taste, sample_taste, category_pop,
        None if entity == "206" else groups[entity], rng)
  effects = {f: rng.normal(0.0, 0.3, n) for f, n in PROFILE_CARDINALITY.items()}
  return {
      "user_profile": profile,
      "user_activity": activity / activity.sum(),
      "user_click_bias": (effects["124"][profile["124"]]
                          + effects["125"][profile["125"]]
                          + 0.3 * rng.standard_normal(num_users)),
      "user_conversion_bias": (effects["128"][profile["128"]]
                               + effects["129"][profile["129"]]
                               + 0.3 * rng.standard_normal(num_users)),
      "behaviour": behaviour,
  }


def build_world(config, rng: np.random.Generator) -> World:
  """Builds the shared world of a ``SimulatorConfig`` (intercepts left 0)."""
  sizes = {"101": config.num_users, "205": config.num_items,
           "206": config.num_categories, "207": config.num_shops,
           "216": config.num_brands, "210": config.num_intentions,
           "301": config.num_positions, **PROFILE_CARDINALITY}
  category_pop = _zipf(config.num_categories, 1.0, rng)
  items = _build_items(config, sizes, category_pop, rng)
  users = _build_users(config, sizes, category_pop, items.pop("groups"), rng)
  return World(sizes=sizes, **items, **users)
