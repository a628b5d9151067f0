//! Pacing controllers: from a line item's spend so far today, its day budget and the share of
//! the day's traffic that has passed, decide how much it participates in auctions (a throttle
//! probability) and how hard it bids (a bid multiplier).
//!
//! A controller runs in the pacing loop every control interval (seconds of real or simulated
//! time; any interval, since every gain is scaled by the elapsed `dt`), never per request: the
//! request path only reads the [`PacingState`] it published. It does not count spend or decide
//! the day budget (see [`crate::budget`], [`crate::ledger`]); it never lets a line item take part
//! once the day budget is spent, whatever the mode.
//!
//! The common error signal, reported by [`Controller::error`], is how far spend lags the target
//! curve `budget × target_fraction`, in *hours of average spend* (`budget / 24`): +0.5 means half
//! an hour's worth of the day's average spend behind plan.

use podium_core::Micros;
use serde::{Deserialize, Serialize};

const HOUR_MS: f64 = 3_600_000.0;

/// How a line item's day budget is spent over the day.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum PacingMode {
    /// Spend in step with the traffic forecast, by adaptive throttling (Agarwal et al., KDD 2014).
    Even,
    /// Spend as fast as the market allows until the budget is gone.
    Asap,
    /// Track the forecast spend curve with a PID loop (Zhang et al., WSDM 2016).
    Pid(PidParams),
}

impl Default for PacingMode {
    fn default() -> Self {
        PacingMode::Even
    }
}

/// What the PID loop acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PidTarget {
    /// The bid: multiplier `exp(φ)`, clipped to `[min_multiplier, max_multiplier]`.
    #[default]
    BidMultiplier,
    /// The participation probability: throttle `exp(φ)`, clipped to `[min_throttle, 1]`.
    Throttle,
}

/// PID gains and output bounds. The error is in hours of average spend behind plan; `ki` is per
/// hour and `kd` in hours, so the defaults do not depend on the control interval.
///
/// Defaults (`kp` 8, `ki` 16/h, `kd` 0.05 h) put the closed loop, for a line item whose spend
/// moves in proportion to its multiplier, near critical damping with a natural frequency of about
/// 4 per hour: a disturbance is absorbed in about an hour without oscillating.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PidParams {
    /// What the output drives.
    pub target: PidTarget,
    /// Proportional gain.
    pub kp: f64,
    /// Integral gain, per hour.
    pub ki: f64,
    /// Derivative gain, in hours (acts on a low-passed derivative).
    pub kd: f64,
    /// Lowest bid multiplier.
    pub min_multiplier: f64,
    /// Highest bid multiplier.
    pub max_multiplier: f64,
    /// Lowest throttle when the throttle is the output (never zero, so spend can be measured).
    pub min_throttle: f64,
}

impl Default for PidParams {
    fn default() -> Self {
        Self {
            target: PidTarget::BidMultiplier,
            kp: 8.0,
            ki: 16.0,
            kd: 0.05,
            min_multiplier: 0.2,
            max_multiplier: 3.0,
            min_throttle: 1e-3,
        }
    }
}

/// What the request path applies to a line item until the next control update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PacingState {
    /// Probability that a request may include the line item, 0–1.
    pub throttle: f64,
    /// Factor on the line item's bid.
    pub multiplier: f64,
}

impl PacingState {
    /// No pacing: always participate at the base bid.
    pub const OPEN: PacingState = PacingState {
        throttle: 1.0,
        multiplier: 1.0,
    };
    /// Out of budget: never participate.
    pub const STOPPED: PacingState = PacingState {
        throttle: 0.0,
        multiplier: 1.0,
    };
}

/// Tuning of the even (adaptive throttling) controller.
#[derive(Clone, Copy, Debug, PartialEq)]
struct EvenParams {
    /// Throttle of a line item never paced before (later days start from yesterday's).
    initial_throttle: f64,
    min_throttle: f64,
    /// Time constant of the market-capacity estimate.
    capacity_tau_ms: f64,
    /// Time constant with which the throttle moves toward its target.
    throttle_tau_ms: f64,
    /// Most the throttle may move in one time constant (a factor).
    max_step: f64,
    /// Horizon over which a lead or lag on the target curve is worked off.
    catch_up_ms: f64,
}

const EVEN: EvenParams = EvenParams {
    initial_throttle: 0.1,
    min_throttle: 1e-4,
    capacity_tau_ms: 120_000.0,
    throttle_tau_ms: 60_000.0,
    max_step: 4.0,
    catch_up_ms: 1_800_000.0,
};

#[derive(Clone, Copy, Debug)]
struct Last {
    now_ms: i64,
    spent: i64,
    fraction: f64,
}

/// A pacing controller for one line item; call [`Controller::update`] every control interval.
#[derive(Clone, Debug)]
pub struct Controller {
    mode: PacingMode,
    state: PacingState,
    last: Option<Last>,
    error: f64,
    // Even: the throttle (kept while stopped, so tomorrow starts from it) and the estimated spend
    // rate per unit of throttle (micros per ms at throttle 1).
    throttle: f64,
    capacity: Option<f64>,
    // PID: integral term (already times ki), filtered derivative of the error (per hour), output.
    integral: f64,
    derivative: f64,
    phi: f64,
}

impl Controller {
    /// A controller in `mode` that has not seen any spend yet.
    pub fn new(mode: PacingMode) -> Self {
        Self {
            mode,
            state: PacingState::OPEN,
            last: None,
            error: 0.0,
            throttle: EVEN.initial_throttle,
            capacity: None,
            integral: 0.0,
            derivative: 0.0,
            phi: 0.0,
        }
    }

    /// The mode it runs.
    pub fn mode(&self) -> PacingMode {
        self.mode
    }

    /// The state published by the last update.
    pub fn state(&self) -> PacingState {
        self.state
    }

    /// Spend lag behind the target curve at the last update, in hours of average spend
    /// (`budget / 24`); positive means behind plan. What a report plots to show settling.
    pub fn error(&self) -> f64 {
        self.error
    }

    /// The PID output `φ` (log of the multiplier or throttle); 0 for other modes.
    pub fn output(&self) -> f64 {
        self.phi
    }

    /// Updates from today's spend, the day budget and the forecast share of the day's traffic
    /// passed by `now_ms` (see [`crate::TrafficForecast::fraction_elapsed`]). A new day is
    /// recognised by spend or the fraction going backwards.
    pub fn update(
        &mut self,
        now_ms: i64,
        spent_today: Micros,
        day_budget: Micros,
        target_fraction: f64,
    ) -> PacingState {
        let fraction = target_fraction.clamp(0.0, 1.0);
        let budget = day_budget.0.max(0) as f64;
        let spent = spent_today.0;
        let hourly = (budget / 24.0).max(1.0);
        let prev_error = self.error;
        self.error = (budget * fraction - spent as f64) / hourly;
        let last = self.last.replace(Last {
            now_ms,
            spent,
            fraction,
        });
        let new_day = last.is_some_and(|l| spent < l.spent || fraction + 0.5 < l.fraction);
        let last = last.filter(|l| !new_day && now_ms > l.now_ms);
        if new_day {
            self.derivative = 0.0;
        }
        if spent >= day_budget.0 {
            // Never participate once the day budget is spent; controller state is kept.
            self.state = PacingState::STOPPED;
            return self.state;
        }
        self.state = match self.mode {
            PacingMode::Asap => PacingState::OPEN,
            PacingMode::Even => self.update_even(last, spent, budget, fraction, now_ms),
            PacingMode::Pid(p) => self.update_pid(&p, last, prev_error, now_ms),
        };
        self.state
    }

    /// Adaptive throttling after Agarwal et al. (LinkedIn, KDD 2014): the spend the plan wants
    /// in the next interval is compared with what the line item spends per unit of throttle,
    /// and the throttle moves multiplicatively toward their ratio.
    ///
    /// `capacity` ← EWMA of `interval spend / (throttle × dt)` (time constant 2 min);
    /// `desired rate = budget × Δfraction / dt − lead / 30 min` (the plan's rate, plus working
    /// off any lead or lag over half an hour); `throttle ← throttle × clamp(desired / (capacity ×
    /// throttle), 4^-g, 4^g)^g`, `g = 1 − exp(−dt / 1 min)`, clamped to [1e-4, 1].
    fn update_even(
        &mut self,
        last: Option<Last>,
        spent: i64,
        budget: f64,
        fraction: f64,
        now_ms: i64,
    ) -> PacingState {
        let Some(last) = last else {
            return PacingState {
                throttle: self.throttle,
                multiplier: 1.0,
            };
        };
        let dt = (now_ms - last.now_ms) as f64;
        let slot_spend = (spent - last.spent).max(0) as f64;
        let seen = slot_spend / (self.throttle * dt);
        let k = 1.0 - (-dt / EVEN.capacity_tau_ms).exp();
        let capacity = match self.capacity {
            Some(c) => c + k * (seen - c),
            None => seen,
        };
        self.capacity = Some(capacity);
        let plan_rate = budget * (fraction - last.fraction).max(0.0) / dt;
        let lead = spent as f64 - budget * fraction;
        let desired = plan_rate - lead / EVEN.catch_up_ms;
        let current = capacity * self.throttle;
        let ln_step = if desired <= 0.0 {
            -EVEN.max_step.ln()
        } else if current <= 0.0 {
            EVEN.max_step.ln()
        } else {
            (desired / current)
                .ln()
                .clamp(-EVEN.max_step.ln(), EVEN.max_step.ln())
        };
        let g = 1.0 - (-dt / EVEN.throttle_tau_ms).exp();
        self.throttle = (self.throttle * (g * ln_step).exp()).clamp(EVEN.min_throttle, 1.0);
        PacingState {
            throttle: self.throttle,
            multiplier: 1.0,
        }
    }

    /// PID after Zhang et al. (WSDM 2016): `φ = kp·e + ki·∫e dt + kd·de/dt` on the error `e`
    /// (hours of average spend behind plan), applied as `exp(φ)` to the bid or the throttle.
    /// Anti-windup: the integral stops growing while the output is clipped in the direction the
    /// error pushes, and is itself kept within the output's range.
    fn update_pid(
        &mut self,
        p: &PidParams,
        last: Option<Last>,
        prev_e: f64,
        now_ms: i64,
    ) -> PacingState {
        let (lo, hi) = match p.target {
            PidTarget::BidMultiplier => (p.min_multiplier.ln(), p.max_multiplier.ln()),
            PidTarget::Throttle => (p.min_throttle.max(1e-9).ln(), 0.0),
        };
        let e = self.error;
        if let Some(last) = last {
            let dt_h = (now_ms - last.now_ms) as f64 / HOUR_MS;
            let raw = (e - prev_e) / dt_h;
            // Low-pass the derivative (time constant 2 min): spend arrives in lumps.
            let k = 1.0 - (-dt_h * 30.0).exp();
            self.derivative += k * (raw - self.derivative);
            let saturated = (self.phi >= hi && e > 0.0) || (self.phi <= lo && e < 0.0);
            if !saturated {
                self.integral = (self.integral + p.ki * e * dt_h).clamp(lo, hi);
            }
        }
        self.phi = p.kp * e + self.integral + p.kd * self.derivative;
        let out = self.phi.clamp(lo, hi).exp();
        match p.target {
            PidTarget::BidMultiplier => PacingState {
                throttle: 1.0,
                multiplier: out,
            },
            PidTarget::Throttle => PacingState {
                throttle: out,
                multiplier: 1.0,
            },
        }
    }
}
