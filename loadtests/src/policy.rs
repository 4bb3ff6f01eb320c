//! The policies a simulation can run, as named on the command line.

use std::fmt;
use std::str::FromStr;

/// An autoscaling policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Shoal's planner with a fixed idle timeout, in seconds.
    Fixed(f64),
    /// Shoal's planner with the adaptive idle policy; the optional value overrides the idle
    /// seconds one cold start is worth.
    Adaptive(Option<f64>),
    /// KEDA scaling a Deployment on queue length through the HPA.
    Keda,
    /// fly-autoscaler starting and stopping Fly Machines on queue depth.
    FlyAutoscaler,
}

/// A policy name that is not one of the above.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown policy `{0}`: expected fixed:SECONDS, adaptive, adaptive:SECONDS, keda or fly-autoscaler"
)]
pub struct BadPolicy(String);

impl FromStr for Policy {
    type Err = BadPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPolicy(s.to_string());
        let num = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(bad)
        };
        match s {
            "adaptive" => Ok(Policy::Adaptive(None)),
            "keda" => Ok(Policy::Keda),
            "fly-autoscaler" | "fly" => Ok(Policy::FlyAutoscaler),
            _ => match s.split_once(':') {
                Some(("fixed", v)) => Ok(Policy::Fixed(num(v)?)),
                Some(("adaptive", v)) => Ok(Policy::Adaptive(Some(num(v)?))),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Fixed(s) => write!(f, "fixed:{s}"),
            Policy::Adaptive(None) => write!(f, "adaptive"),
            Policy::Adaptive(Some(w)) => write!(f, "adaptive:{w}"),
            Policy::Keda => write!(f, "keda"),
            Policy::FlyAutoscaler => write!(f, "fly-autoscaler"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for s in [
            "fixed:600",
            "fixed:0.5",
            "adaptive",
            "adaptive:90",
            "keda",
            "fly-autoscaler",
        ] {
            assert_eq!(s.parse::<Policy>().unwrap().to_string(), s);
        }
        assert!("fixed:-1".parse::<Policy>().is_err());
        assert!("lru".parse::<Policy>().is_err());
    }
}
