//! What the index knows of a point besides its vector — where and when it was recorded — and which points a search
//! admits; vectors enter the index as unit vectors ([`unit`]).

use crate::Error;

/// Where and when a segment was recorded, for filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointInfo {
    /// Sensor id.
    pub sensor: String,
    /// Start time, in microseconds since the epoch.
    pub start_micros: i64,
}

/// Which segments may answer a query: all when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these sensors (none: any).
    pub sensors: Vec<String>,
    /// Only segments starting at or after this time (microseconds since the epoch).
    pub from_micros: Option<i64>,
    /// Only segments starting before this time.
    pub to_micros: Option<i64>,
}

impl Filter {
    /// Whether it lets everything through.
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty() && self.from_micros.is_none() && self.to_micros.is_none()
    }

    /// Whether a segment of `sensor` starting at `start_micros` passes.
    pub fn admits(&self, sensor: &str, start_micros: i64) -> bool {
        self.from_micros.is_none_or(|from| start_micros >= from)
            && self.to_micros.is_none_or(|to| start_micros < to)
            && (self.sensors.is_empty() || self.sensors.iter().any(|s| s == sensor))
    }

    /// Whether segments starting within `[first, last]` may pass.
    pub fn overlaps(&self, (first, last): (i64, i64)) -> bool {
        self.from_micros.is_none_or(|from| last >= from) && self.to_micros.is_none_or(|to| first < to)
    }
}

/// `v / |v|`; rejects vectors of the wrong length or without a direction.
pub fn unit(v: &[f32], dim: usize) -> Result<Vec<f32>, Error> {
    if v.len() != dim {
        return Err(Error::Vector(format!("{} dimensions, the index holds {dim}", v.len())));
    }
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if !norm.is_finite() || norm < 1e-12 {
        return Err(Error::Vector(format!("its norm is {norm}: no direction to compare")));
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}
