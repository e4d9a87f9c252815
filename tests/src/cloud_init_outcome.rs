//! What cloud-init recorded on a guest's disk about its boot: the facts a
//! test asserts on.
//!
//! - `/var/lib/cloud/data/status.json`: `v1.datasource` and, per stage
//!   (`init-local`, `init`, `modules-config`, `modules-final`), `errors` and
//!   — from cloud-init 23.4 — `recoverable_errors` (`{"WARNING": [...]}`);
//! - `/var/lib/cloud/data/result.json`: written when the final stage ends,
//!   with the errors of the whole boot;
//! - `/var/lib/cloud/data/instance-id`;
//! - `/var/log/cloud-init.log`.

use serde_json::Value;

use crate::ext4_image::Ext4Image;

pub const STATUS_JSON: &str = "/var/lib/cloud/data/status.json";
pub const RESULT_JSON: &str = "/var/lib/cloud/data/result.json";
pub const INSTANCE_ID: &str = "/var/lib/cloud/data/instance-id";
pub const LOG: &str = "/var/log/cloud-init.log";

#[derive(Debug)]
pub struct CloudInitOutcome {
    /// `None`: cloud-init never ran (or never got as far as writing it).
    pub status: Option<Value>,
    /// `None`: the final stage never ended.
    pub result: Option<Value>,
    pub instance_id: Option<String>,
    pub log: String,
}

impl CloudInitOutcome {
    pub fn read(disk: &Ext4Image) -> anyhow::Result<Self> {
        let json = |path: &str| -> anyhow::Result<Option<Value>> {
            match disk.read(path)? {
                Some(bytes) => {
                    Ok(Some(serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{path}: {e}"))?))
                }
                None => Ok(None),
            }
        };
        Ok(Self {
            status: json(STATUS_JSON)?,
            result: json(RESULT_JSON)?,
            instance_id: disk.read_text(INSTANCE_ID)?.map(|s| s.trim_end().to_owned()),
            log: disk.read_text(LOG)?.unwrap_or_default(),
        })
    }

    /// `v1.datasource` of status.json, e.g.
    /// `DataSourceNoCloudNet [seed=dmi,http://…][dsmode=net]`.
    pub fn datasource(&self) -> Option<&str> {
        self.status.as_ref()?["v1"]["datasource"].as_str()
    }

    /// Every error of every stage in status.json and of result.json, as
    /// `<where>: <error>`.
    pub fn errors(&self) -> Vec<String> {
        let mut all = Vec::new();
        for (stage, v) in self.stages() {
            for e in v["errors"].as_array().into_iter().flatten() {
                all.push(format!("status.json {stage}: {}", text(e)));
            }
        }
        if let Some(result) = &self.result {
            for e in result["v1"]["errors"].as_array().into_iter().flatten() {
                all.push(format!("result.json: {}", text(e)));
            }
        }
        all
    }

    /// The `recoverable_errors` of every stage (cloud-init ≥ 23.4; none
    /// before), as `<stage> <LEVEL>: <message>`.
    pub fn recoverable_errors(&self) -> Vec<String> {
        let mut all = Vec::new();
        for (stage, v) in self.stages() {
            for (level, messages) in v["recoverable_errors"].as_object().into_iter().flatten() {
                for m in messages.as_array().into_iter().flatten() {
                    all.push(format!("{stage} {level}: {}", text(m)));
                }
            }
        }
        all
    }

    /// The lines of cloud-init.log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<&str> {
        self.log.lines().filter(|l| l.contains(needle)).collect()
    }

    /// status.json's per-stage objects (those with an `errors` list).
    fn stages(&self) -> Vec<(&str, &Value)> {
        let Some(v1) = self.status.as_ref().and_then(|s| s["v1"].as_object()) else {
            return Vec::new();
        };
        v1.iter().filter(|(_, v)| v["errors"].is_array()).map(|(k, v)| (k.as_str(), v)).collect()
    }
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn outcome(status: Value, result: Value) -> CloudInitOutcome {
        CloudInitOutcome {
            status: Some(status),
            result: Some(result),
            instance_id: None,
            log: "a dsmode=net\nb\nc dsmode=local\n".into(),
        }
    }

    #[test]
    fn errors_and_recoverable_errors_of_every_stage() {
        // Shaped like cloud-init 25.1's files.
        let o = outcome(
            json!({"v1": {
                "datasource": "DataSourceNoCloudNet [seed=dmi,http://169.254.169.254/nocloud/]",
                "init": {"errors": ["('resizefs', …)"], "recoverable_errors": {"WARNING": ["ifup failed"]}},
                "init-local": {"errors": [], "recoverable_errors": {}},
                "modules-final": {"errors": [], "recoverable_errors": {"DEPRECATED": ["old key"]}},
                "stage": null
            }}),
            json!({"v1": {"datasource": "x", "errors": ["('resizefs', …)"]}}),
        );
        assert_eq!(o.datasource(), Some("DataSourceNoCloudNet [seed=dmi,http://169.254.169.254/nocloud/]"));
        assert_eq!(o.errors(), ["status.json init: ('resizefs', …)", "result.json: ('resizefs', …)"]);
        assert_eq!(
            o.recoverable_errors(),
            ["init WARNING: ifup failed", "modules-final DEPRECATED: old key"]
        );
        assert_eq!(o.log_lines("dsmode="), ["a dsmode=net", "c dsmode=local"]);
    }

    #[test]
    fn a_clean_boot_of_an_older_release_has_neither() {
        // Shaped like cloud-init 22.4's: no recoverable_errors at all.
        let o = outcome(
            json!({"v1": {"datasource": "d", "init": {"errors": [], "finished": 1.0}, "stage": null}}),
            json!({"v1": {"datasource": "d", "errors": []}}),
        );
        assert!(o.errors().is_empty());
        assert!(o.recoverable_errors().is_empty());
        let never_ran =
            CloudInitOutcome { status: None, result: None, instance_id: None, log: String::new() };
        assert_eq!(never_ran.datasource(), None);
        assert!(never_ran.errors().is_empty());
    }
}
