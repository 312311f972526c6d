"""The identifiable floor of a regime: the best target a propensity can reach.

IPW and the doubly robust estimators pull the CVR tower towards the true CVR
of the clicks weighted by 1/ô, the propensity they are given. With the true
p_click that target is the entire-space mean CVR; with a propensity learnt
from the data it is off by what the data cannot reveal about p_click. This
module computes, with numpy on the simulator's own world, the best such
target: the one of the Bayes propensity, E[p_click | the features and the
training clicks].

What the features reveal (reading ``escm2_tf.simulator``): the click logit is
a fixed function of the user's profile and behaviour, the item's category,
shop, brand and intentions, their overlap and the position, all carried in
the features, plus two latents carried by no feature but an id: the item's
click quality (drawn independently of its fields, so only the item id
reveals it) and the part of the user's click bias that the profile fields do
not explain (the residual of a least-squares fit of the bias on their one-hot
codes), plus the user's intent (``SimulatorConfig.user_intent``): only the
user id reveals those. A model can learn each latent only
from the training impressions of its id. The floor's propensity takes the
observable part as known (the limit of unlimited data for shared features)
and each latent from its Bayesian posterior given its id's training clicks,
on a grid, with the other latent known (optimistic, so the floor is a lower
bound); the two posteriors are combined as independent. A request's hidden
intent (``SimulatorConfig.hidden_intent``) is carried by nothing a model
sees, not even an id, so the floor's propensity takes it at its prior; the
posteriors of the latents are computed with it known (optimistic again). The
clip of ``LossConfig.propensity_clip`` applies as in training, so the floor
includes what the clip costs with perfect propensities.
"""

import dataclasses
from typing import Any

import numpy as np

from escm2_tf import config as config_lib
from escm2_tf import simulator
from escm2_tf.simulator import traffic
from escm2_tf.simulator import world as world_lib

GRID_POINTS = 41
GRID_WIDTH = 4.0  # Prior standard deviations each side.
INTENT_POINTS = 16  # Gauss-Hermite nodes over the hidden intent.
# What identifiable_floor returns about a regime's bias, and a ratio.
BIASES = ("floor", "floor_without_ids", "floor_true_propensity", "esmm_limit")
KINDS = BIASES + ("bayes_cvr_on_clicks",)
_CHUNK = 8192


def complete(floors: dict[str, Any] | None) -> bool:
  """Whether ``floors`` (``identifiable_floor``'s) holds every kind."""
  return set(KINDS) <= set(floors or {})


def _click_logit(world: world_lib.World, imp: traffic.Impressions
                 ) -> np.ndarray:
  return traffic.logit(traffic.probabilities(world, imp)["p_click"])


def profile_fit(world: world_lib.World) -> np.ndarray:
  """The user click bias the profile fields explain (least squares)."""
  columns = [np.ones(len(world.user_click_bias))]
  for values in world.user_profile.values():
    columns += [values == v for v in np.unique(values)[1:]]
  design = np.stack(columns, axis=1).astype(np.float64)
  coefficients, *_ = np.linalg.lstsq(design, world.user_click_bias,
                                     rcond=None)
  return design @ coefficients


@dataclasses.dataclass(frozen=True)
class Latents:
  """The click logit's latent terms and their priors.

  Attributes:
    world: The world.
    item_scale: Logit units per unit of the item's click quality.
    user_term: Per user, the click logit's term that only the user id
      reveals: its unexplained click bias and its intent, in logit units.
  """
  world: world_lib.World
  item_scale: float
  user_term: np.ndarray

  @property
  def item_std(self) -> float:
    return abs(self.item_scale) * float(np.std(self.world.item_click_quality))

  @property
  def user_std(self) -> float:
    return float(np.std(self.user_term))

  def parts(self, imp: traffic.Impressions
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(full click logit, its item term, its user term) per impression."""
    item = self.item_scale * self.world.item_click_quality[imp.item]
    user = self.user_term[imp.user]
    return _click_logit(self.world, imp), item, user


def latents(world: world_lib.World, imp: traffic.Impressions) -> Latents:
  """Measures how the latents enter the click logit, from the simulator.

  The logit is linear in both: each scale is the change of the logit when
  the latent is removed, per unit of the latent, read off ``imp``.
  """
  full = _click_logit(world, imp)
  fitted = profile_fit(world)
  residual = world.user_click_bias - fitted
  scales = []
  for replaced, unit in (
      ({"item_click_quality": np.zeros_like(world.item_click_quality)},
       world.item_click_quality[imp.item]),
      ({"user_click_bias": fitted}, residual[imp.user])):
    change = full - _click_logit(dataclasses.replace(world, **replaced), imp)
    usable = np.abs(unit) > 1e-3
    scales.append(float(np.median(change[usable] / unit[usable]))
                  if usable.any() else 0.0)
  user_term = scales[1] * residual
  if world.user_intent is not None:
    user_term = user_term + world.user_intent
  return Latents(world, scales[0], user_term)


def _grid(std: float) -> tuple[np.ndarray, np.ndarray]:
  """Grid values and log prior weights of a N(0, std²) latent."""
  x = np.linspace(-GRID_WIDTH, GRID_WIDTH, GRID_POINTS)
  log_prior = -0.5 * x * x
  return std * x, log_prior - np.logaddexp.reduce(log_prior)


def posterior(ids: np.ndarray, num_ids: int, rest: np.ndarray,
              clicks: np.ndarray, values: np.ndarray, log_prior: np.ndarray
              ) -> np.ndarray:
  """Per id, the posterior weights of a logit term on the grid ``values``.

  Args:
    ids: The id of each training impression.
    num_ids: How many ids there are.
    rest: The rest of each impression's click logit.
    clicks: Its click, 0 or 1.
    values: The grid of the id's term.
    log_prior: Log prior weight of each grid value.

  Returns:
    float64[num_ids, len(values)], rows summing to 1; the prior for ids
    without training impressions.
  """
  log_post = np.tile(log_prior, (num_ids, 1))
  for k, value in enumerate(values):
    logit = rest + value
    # log σ(l) for a click, log(1 - σ(l)) = log σ(-l) otherwise.
    log_likelihood = -np.logaddexp(0.0, np.where(clicks > 0, -logit, logit))
    log_post[:, k] += np.bincount(ids, log_likelihood, minlength=num_ids)
  log_post -= np.logaddexp.reduce(log_post, axis=1, keepdims=True)
  return np.exp(log_post)


def intent_nodes(std: float) -> tuple[np.ndarray, np.ndarray]:
  """Values and weights (summing to 1) that integrate over N(0, std²)."""
  if std <= 0:
    return np.zeros(1), np.ones(1)
  nodes, weights = np.polynomial.hermite_e.hermegauss(INTENT_POINTS)
  return std * nodes, weights / weights.sum()


def propensity(observable: np.ndarray, item_weights: np.ndarray,
               item_values: np.ndarray, user_weights: np.ndarray,
               user_values: np.ndarray, intent_std: float = 0.0
               ) -> np.ndarray:
  """E[σ(observable + item + user + intent)] per impression.

  The latents follow their independent grid posteriors, the intent its
  N(0, ``intent_std``²) prior.
  """
  out = np.zeros(len(observable))
  shifts = (item_values[:, None] + user_values[None, :]).ravel()
  intents, intent_weights = intent_nodes(intent_std)
  for start in range(0, len(observable), _CHUNK):
    block = slice(start, start + _CHUNK)
    joint = (item_weights[block, :, None] *
             user_weights[block, None, :]).reshape(-1, len(shifts))
    for intent, weight in zip(intents, intent_weights):
      logit = observable[block, None] + shifts[None, :] + intent
      out[block] += weight * np.sum(joint * traffic.sigmoid(logit), axis=1)
  return out


def intent_mean(logit: np.ndarray, intent_std: float) -> np.ndarray:
  """E[σ(logit + s)] over s ~ N(0, intent_std²)."""
  intents, weights = intent_nodes(intent_std)
  return sum(weight * traffic.sigmoid(logit + intent)
             for intent, weight in zip(intents, weights))


def clicked_cvr_limit(click_logit: np.ndarray, conversion_logit: np.ndarray,
                      intent_std: float) -> float:
  """Mean of E[σ(conversion + s) | click] over s ~ N(0, intent_std²).

  The logits leave the intent s out; a click makes a high s likelier.
  """
  intents, weights = intent_nodes(intent_std)
  converted = sum(weight * traffic.sigmoid(click_logit + intent)
                  * traffic.sigmoid(conversion_logit + intent)
                  for intent, weight in zip(intents, weights))
  return float(np.mean(converted / intent_mean(click_logit, intent_std)))


def ips_target(p_click: np.ndarray, p_conversion: np.ndarray,
               propensity_values: np.ndarray, clip: float) -> float:
  """The true CVR of the expected clicks weighted by 1/max(ô, clip)."""
  weights = p_click / np.maximum(propensity_values, clip)
  return float(np.sum(weights * p_conversion) / np.sum(weights))


def identifiable_floor(world: world_lib.World,
                       train: tuple[traffic.Impressions, np.ndarray],
                       test: tuple[traffic.Impressions, dict[str, np.ndarray]],
                       clip: float, intent_std: float = 0.0
                       ) -> dict[str, float]:
  """The floor of a world, given its training impressions and clicks.

  Args:
    world: The calibrated world.
    train: The training impressions and their clicks (0/1).
    test: The test impressions and their truth (``p_click``,
      ``p_conversion``, ``click``).
    clip: The propensity clip of training.
    intent_std: ``SimulatorConfig.hidden_intent`` of the world.

  Returns:
    ``floor``: the IPS target of the Bayes propensity less the true mean
    CVR of the test impressions; ``floor_without_ids``: the same when no id
    is learnt (every latent at its prior: what a model whose ids all fall
    out of the vocabulary can reach); ``floor_true_propensity``: with the
    true p_click (0 but for the clip); ``esmm_limit``: the mean over the
    test impressions of E[p_conversion | click, every latent but the
    intent] less the true mean CVR, the bias a model of the clicked CVR
    such as ESMM keeps with unlimited data (0 without a hidden intent);
    ``bayes_cvr_on_clicks``: the mean over the test clicks of
    E[p_conversion | every latent but the intent], the entire-space
    predictor without bias, over their mean p_conversion: what an unbiased
    model's pCVR on clicks (``calibration_cvr``) is at best (1 without a
    hidden intent); ``true_cvr``: that mean; the latents' prior standard
    deviations in logit units.
  """
  train_imp, clicks = train
  test_imp, truth = test
  measured = latents(world, train_imp)
  item_values, item_prior = _grid(measured.item_std)
  user_values, user_prior = _grid(measured.user_std)
  full, item, user = measured.parts(train_imp)
  item_post = posterior(train_imp.item, world.sizes["205"], full - item,
                        clicks, item_values, item_prior)
  user_post = posterior(train_imp.user, world.sizes["101"], full - user,
                        clicks, user_values, user_prior)
  full, item, user = measured.parts(test_imp)
  observable = full - item - user - test_imp.intent
  conversion = traffic.logit(truth["p_conversion"]) - test_imp.intent
  clicked = truth["click"] == 1
  bayes_on_clicks = (float(
      np.mean(intent_mean(conversion, intent_std)[clicked])
      / np.mean(truth["p_conversion"][clicked])) if clicked.any() else None)
  true_cvr = float(np.mean(truth["p_conversion"]))

  def gap(weights_item: np.ndarray, weights_user: np.ndarray) -> float:
    q = propensity(observable, weights_item, item_values, weights_user,
                   user_values, intent_std)
    return ips_target(truth["p_click"], truth["p_conversion"], q,
                      clip) - true_cvr

  num = len(observable)
  return {
      "floor": gap(item_post[test_imp.item], user_post[test_imp.user]),
      "floor_without_ids": gap(np.tile(np.exp(item_prior), (num, 1)),
                               np.tile(np.exp(user_prior), (num, 1))),
      "floor_true_propensity": ips_target(
          truth["p_click"], truth["p_conversion"], truth["p_click"],
          clip) - true_cvr,
      "esmm_limit": clicked_cvr_limit(full - test_imp.intent, conversion,
                                      intent_std) - true_cvr,
      "bayes_cvr_on_clicks": bayes_on_clicks,
      "true_cvr": true_cvr,
      "item_latent_std": measured.item_std,
      "user_latent_std": measured.user_std,
  }


def regime_floor(config: simulator.SimulatorConfig) -> dict[str, Any]:
  """``identifiable_floor`` of the world and splits ``config`` simulates.

  The splits are the simulator's own (same seed, same draws as the files).
  """
  world = simulator.build_world(config)
  train_imp, train_truth = simulator.sample_split(config, world, "train")
  test_imp, test_truth = simulator.sample_split(config, world, "test")
  clip = config_lib.LossConfig().propensity_clip
  return identifiable_floor(world, (train_imp, train_truth["click"]),
                            (test_imp, test_truth), clip,
                            config.hidden_intent)
