"""Traffic of the simulated world: requests, impressions and their true rates.

A request shows one user a few dozen items, half of them from the user's own
behaviour categories (as a recommender's candidates would be), half by global
popularity. The true click and post-click conversion probabilities of an
impression are logistic functions of what its features encode; their
intercepts are calibrated to the configured CTR and CVR.

Click and conversion both rise with the overlap between the user's behaviour
and the item (category, shop, brand, intentions) and with correlated item
qualities, so clicked impressions convert more often than unclicked ones would:
the selection bias ESCM2 corrects. They differ in what else they use: clicks
fall with the position (field ``301``), conversions depend on whether the
item's price tier suits the user's consumption level (field ``126``).
A request may also carry a hidden intent (``SimulatorConfig.hidden_intent``)
that raises both logits of its impressions and that no feature reveals, and a
user an intent (``SimulatorConfig.user_intent``) that only the user id does.
"""

import dataclasses

import numpy as np

from escm2_tf.simulator import world as sw

_TARGETED_SHARE = 0.5  # Impressions picked from the user's categories.

# Weights of the two true logits (the intercepts are calibrated).
_CLICK = {"quality": 0.7, "category": 0.8, "shop": 0.6, "brand": 0.4,
          "intention": 0.3, "user": 0.4, "position": 0.35}
_CONVERSION = {"quality": 0.7, "category": 0.8, "shop": 0.3, "brand": 0.8,
               "intention": 0.3, "user": 0.4, "price": 0.6}


@dataclasses.dataclass(frozen=True)
class Impressions:
  """Impressions in request order; every request shows items to one user."""
  request_user: np.ndarray
  request_size: np.ndarray
  user: np.ndarray
  item: np.ndarray
  position: np.ndarray
  # Behaviour count of the user for the item's entity of each behaviour
  # field (0 = no overlap); "150_14" is [impressions, sw.MAX_ITEM_INTENTIONS].
  overlap: dict[str, np.ndarray]
  # The request's hidden intent, in logit units, added to both true logits.
  intent: np.ndarray


def _request_sizes(num: int, mean: int, rng: np.random.Generator) -> np.ndarray:
  """Sizes 1 + Poisson(mean - 1) summing to exactly ``num``."""
  sizes = np.zeros(0, np.int64)
  while sizes.sum() < num:
    more = 1 + rng.poisson(mean - 1, num // mean + 16)
    sizes = np.concatenate([sizes, more])
  ends = np.cumsum(sizes)
  last = int(np.searchsorted(ends, num))
  sizes = sizes[:last + 1].copy()
  sizes[-1] -= ends[last] - num
  return sizes


def sample_impressions(world: sw.World, num: int, mean_per_request: int,
                       rng: np.random.Generator,
                       hidden_intent: float = 0.0) -> Impressions:
  """Samples ``num`` impressions, a user's requests kept together.

  A request's intent is N(0, ``hidden_intent``²), drawn after everything
  else, so that the impressions do not depend on ``hidden_intent`` and 0
  draws nothing.
  """
  sizes = _request_sizes(num, mean_per_request, rng)
  request_user = np.sort(rng.choice(len(world.user_activity), len(sizes),
                                    p=world.user_activity))
  user = np.repeat(request_user, sizes)
  starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
  position = np.minimum(np.arange(num) - starts, world.sizes["301"] - 1)
  # Half the items come from the user's own categories, as a recommender's
  # candidates would; the others follow global popularity.
  categories = world.behaviour["109_14"]
  first = categories.offsets[user]
  length = categories.offsets[user + 1] - first
  own = categories.keys[first + (rng.random(num) * length).astype(np.int64)]
  own_category = own - user * categories.size
  item = np.where(rng.random(num) < _TARGETED_SHARE,
                  sw.pick_member(world.items_by_category, own_category, rng),
                  rng.choice(len(world.item_popularity), num,
                             p=world.item_popularity))
  overlap = {field: world.behaviour[field].lookup(
      user, world.item_fields[sw.BEHAVIOUR_ENTITY[field]][item])
             for field in ("109_14", "110_14", "127_14")}
  overlap["150_14"] = world.behaviour["150_14"].lookup(
      user[:, None], world.item_intentions[item])
  intent = np.zeros(num)
  if hidden_intent > 0:
    intent = np.repeat(hidden_intent * rng.standard_normal(len(sizes)), sizes)
  return Impressions(request_user, sizes, user, item, position, overlap,
                     intent)


def _default_logits(world: sw.World, imp: Impressions
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The click interest, the click position term and the default conversion.

  The click logit is ``interest - position``; all three leave out their
  intercepts.
  """
  seen = {f: (c > 0).astype(np.float64) for f, c in imp.overlap.items()}
  category = np.log1p(imp.overlap["109_14"])
  intention = seen["150_14"].max(axis=1)
  interest = (_CLICK["quality"] * world.item_click_quality[imp.item]
              + _CLICK["category"] * category
              + _CLICK["shop"] * seen["110_14"]
              + _CLICK["brand"] * seen["127_14"]
              + _CLICK["intention"] * intention
              + _CLICK["user"] * world.user_click_bias[imp.user])
  position = _CLICK["position"] * np.log1p(imp.position)
  conversion = (
      _CONVERSION["quality"] * world.item_conversion_quality[imp.item]
      + _CONVERSION["category"] * category
      + _CONVERSION["shop"] * seen["110_14"]
      + _CONVERSION["brand"] * seen["127_14"]
      + _CONVERSION["intention"] * intention
      + _CONVERSION["user"] * world.user_conversion_bias[imp.user]
      - _CONVERSION["price"] * _tier_gap(world, imp))
  return interest, position, conversion


def _tier_gap(world: sw.World, imp: Impressions) -> np.ndarray:
  return np.abs(world.user_profile["126"][imp.user]
                - world.item_price_tier[imp.item])


def _own_conversion(world: sw.World, imp: Impressions) -> np.ndarray:
  """A conversion logit that shares nothing with the click's.

  The item's conversion quality less its click-quality share, the user's
  conversion bias (other profile fields than the click bias) and the price
  tier's fit: all independent of what the click logit uses.
  """
  item = imp.item
  independent_quality = (
      world.item_conversion_quality[item]
      - sw.QUALITY_CORRELATION * world.item_click_quality[item]
  ) / np.sqrt(1 - sw.QUALITY_CORRELATION ** 2)
  return (_CONVERSION["quality"] * independent_quality
          + _CONVERSION["user"] * world.user_conversion_bias[imp.user]
          - _CONVERSION["price"] * _tier_gap(world, imp))


def _logits(world: sw.World, imp: Impressions) -> tuple[np.ndarray, np.ndarray]:
  """The two true logits without their intercepts, the intent included."""
  interest, position, conversion = _default_logits(world, imp)
  if world.conversion_mixing is not None:
    conversion = _mixed_conversion(world.conversion_mixing, interest,
                                   _own_conversion(world, imp))
  intent = imp.intent
  if world.user_intent is not None:
    intent = intent + world.user_intent[imp.user]
  return interest - position + intent, conversion + intent


def _mixed_conversion(mixing: sw.ConversionMixing, interest: np.ndarray,
                      own: np.ndarray) -> np.ndarray:
  """``c·z(interest) + sqrt(1 - c²)·z(own)``, at the default logit's spread."""
  c = mixing.correlation
  shared = (interest - mixing.interest_mean) / mixing.interest_std
  alone = (own - mixing.own_mean) / mixing.own_std
  return mixing.scale * (c * shared + np.sqrt(1.0 - c * c) * alone)


def mixing_on(world: sw.World, imp: Impressions,
              correlation: float) -> sw.ConversionMixing:
  """Standardises both parts on ``imp``, so that their logits correlate at
  about ``correlation`` (exactly on ``imp`` if the parts were independent)."""
  interest, _, conversion = _default_logits(world, imp)
  own = _own_conversion(world, imp)
  return sw.ConversionMixing(
      correlation=float(correlation),
      interest_mean=float(interest.mean()), interest_std=float(interest.std()),
      own_mean=float(own.mean()), own_std=float(own.std()),
      scale=float(conversion.std()))


def sigmoid(x: np.ndarray) -> np.ndarray:
  """The logistic function the true probabilities are made with."""
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def logit(p: np.ndarray) -> np.ndarray:
  """The inverse of ``sigmoid``, for probabilities in (0, 1)."""
  return np.log(p) - np.log1p(-p)


def _solve(target: float, mean_at) -> float:
  """The intercept b with mean_at(b) == target, mean_at increasing."""
  low, high = -40.0, 40.0
  for _ in range(80):
    mid = 0.5 * (low + high)
    low, high = (mid, high) if mean_at(mid) < target else (low, mid)
  return 0.5 * (low + high)


def calibrate(world: sw.World, imp: Impressions, ctr: float,
              cvr: float, correlation: float | None = None) -> sw.World:
  """The world with its intercepts calibrated on the impressions ``imp``.

  On ``imp`` the mean click probability becomes ``ctr`` and the mean
  conversion probability weighted by the click probability (the expected
  CVR among clicks) becomes ``cvr``. With a ``correlation``, the conversion
  logit first becomes the mix of ``mixing_on``.
  """
  if correlation is not None:
    world = dataclasses.replace(
        world, conversion_mixing=mixing_on(world, imp, correlation))
  click, conversion = _logits(world, imp)
  click_b = _solve(ctr, lambda b: sigmoid(b + click).mean())
  p_click = sigmoid(click_b + click)
  conversion_b = _solve(cvr, lambda b: np.average(
      sigmoid(b + conversion), weights=p_click))
  return dataclasses.replace(world, click_intercept=click_b,
                             conversion_intercept=conversion_b)


def probabilities(world: sw.World, imp: Impressions) -> dict[str, np.ndarray]:
  """True ``p_click`` and ``p_conversion`` (given a click) per impression."""
  click, conversion = _logits(world, imp)
  return {"p_click": sigmoid(world.click_intercept + click),
          "p_conversion": sigmoid(world.conversion_intercept + conversion)}
