//! `[export]`: page size, prefetch and the largest page held, for the
//! export stage (`X-Crmgate-Export: ndjson`). Messages name the field and
//! the accepted values, never the value written.

use super::super::raw::RawExport;
use super::super::*;
use super::Problems;

/// The page sizes RetailCRM's list methods accept (250 on some of them).
pub(super) const PAGE_SIZES: [u32; 4] = [20, 50, 100, 250];

/// Most pages that may be fetched ahead: each one is held in memory.
const MAX_PREFETCH: i64 = 16;

/// Validates `[export]`.
pub(super) fn export(p: &mut Problems, e: &RawExport) -> ExportConfig {
    let page_limit = match e.page_limit {
        None => 100,
        Some(n) => match u32::try_from(n).ok().filter(|n| PAGE_SIZES.contains(n)) {
            Some(n) => n,
            None => {
                p.push(
                    "export.page_limit",
                    "must be one of RetailCRM's page sizes: 20, 50, 100 or 250",
                );
                100
            }
        },
    };
    let prefetch = match e.prefetch {
        None => 2,
        Some(n) if (1..=MAX_PREFETCH).contains(&n) => n as usize,
        Some(_) => {
            p.push(
                "export.prefetch",
                format!("must be a whole number from 1 to {MAX_PREFETCH} (pages held ahead)"),
            );
            2
        }
    };
    let max_page_bytes = p
        .positive_usize("export.max_page_bytes", e.max_page_bytes, 32 * 1024 * 1024)
        .get();
    ExportConfig {
        page_limit,
        prefetch,
        max_page_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "[[tenants]]\nname = \"acme\"\n\
        base_url = \"https://acme.retailcrm.ru\"\napi_key = \"real-key-0001\"\n";

    fn load(export: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("[export]\n{export}\n{TENANT}"), "t.toml", &|_| {
            None
        })
    }

    #[test]
    fn defaults_are_100_per_page_two_ahead_32_mib() {
        let c = load("").unwrap();
        assert_eq!(
            c.export,
            ExportConfig {
                page_limit: 100,
                prefetch: 2,
                max_page_bytes: 32 * 1024 * 1024
            }
        );
        let c = load("page_limit = 250\nprefetch = 1\nmax_page_bytes = 1000").unwrap();
        assert_eq!(
            (
                c.export.page_limit,
                c.export.prefetch,
                c.export.max_page_bytes
            ),
            (250, 1, 1000)
        );
    }

    #[test]
    fn every_bad_field_is_named_and_no_value_is_echoed() {
        let problems = load("page_limit = 77\nprefetch = 1234567\nmax_page_bytes = -5")
            .unwrap_err()
            .problems;
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("export.page_limit: "),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("export.prefetch: "), "{problems:?}");
        assert!(
            problems[2].starts_with("export.max_page_bytes: "),
            "{problems:?}"
        );
        let all = problems.join("\n");
        assert!(!all.contains("77") && !all.contains("1234567"), "{all}");
        assert!(load("prefetch = 0").is_err());
        assert!(load("page_limit = 0").is_err());
    }

    #[test]
    fn unknown_export_fields_are_rejected() {
        let problems = load("pagelimit = 100").unwrap_err().problems;
        assert!(problems[0].contains("pagelimit"), "{problems:?}");
    }
}
