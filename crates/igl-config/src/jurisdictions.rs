//! `[jurisdictions.<CODE>]`: how this node reaches other jurisdictions' Document APIs, for
//! the object spider (REFERENCE-WIRE §4.8, `IGL_JURISDICTION_DOCUMENT_REPORTS` and the
//! OAuth settings of the reference).
//!
//! ```toml
//! [jurisdictions.SG]
//! document_api_url = "https://documents.sg.example.org/"  # base URL of SG's Document API
//! token = "…"                  # optional bearer token this node presents there (secret)
//! legacy_document_api = false  # true: GET {url}/{multihash} (the reference's path)
//! ```
//!
//! With `legacy_document_api = false` (the default) the spider downloads
//! `GET {document_api_url}/api/v1/documents/{multihash}` (our node's Document API);
//! with `true` it uses the reference's `GET {document_api_url}/{multihash}`. A static
//! bearer token is the only credential today; OAuth2 client credentials (the reference's
//! Cognito/JWT mode) are future work.
//!
//! Keys are jurisdiction codes and are case-insensitive: environment variables can only
//! produce lower-case keys (`IGL_JURISDICTIONS__SG__TOKEN` sets `jurisdictions.sg.token`),
//! so entries whose keys differ only in case are merged, the lower-case key's fields
//! overriding the others. That lets the environment supply a token for a jurisdiction whose
//! URL is in the file. The merged map is keyed by the upper-case code.
//!
//! The node's own public base URL, which channels call back (`node.public_url`), is in
//! `[node]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigProblem;
use crate::secret::SecretString;

/// One `[jurisdictions.<CODE>]` entry (after merging keys that differ only in case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JurisdictionSettings {
    /// Base URL of the jurisdiction's Document API (`http:` or `https:`); required.
    pub document_api_url: String,
    /// Bearer token sent as `Authorization: Bearer <token>` when downloading documents from
    /// this jurisdiction; none by default. Visible ASCII only.
    pub token: Option<SecretString>,
    /// Download from `{document_api_url}/{multihash}` (the reference node's path) instead of
    /// `{document_api_url}/api/v1/documents/{multihash}`. Default `false`.
    pub legacy_document_api: bool,
}

/// An entry as written, before keys differing in case are merged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJurisdiction {
    #[serde(default)]
    document_api_url: Option<String>,
    #[serde(default)]
    token: Option<SecretString>,
    #[serde(default)]
    legacy_document_api: Option<bool>,
}

impl RawJurisdiction {
    fn apply_to(self, settings: &mut JurisdictionSettings) {
        if let Some(url) = self.document_api_url {
            settings.document_api_url = url;
        }
        if let Some(token) = self.token {
            settings.token = Some(token);
        }
        if let Some(legacy) = self.legacy_document_api {
            settings.legacy_document_api = legacy;
        }
    }
}

/// Deserializes the `jurisdictions` table, merging keys that differ only in case (lower-case
/// keys, as the environment produces, override) and keying the result by upper-case code.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, JurisdictionSettings>, D::Error> {
    let raw = BTreeMap::<String, RawJurisdiction>::deserialize(deserializer)?;
    // Entries that are not all lower-case first, so that lower-case ones override them.
    let (lower, other): (Vec<_>, Vec<_>) = raw.into_iter().partition(|(key, _)| {
        key.chars().any(char::is_lowercase) && !key.chars().any(char::is_uppercase)
    });
    let mut merged = BTreeMap::<String, JurisdictionSettings>::new();
    for (key, entry) in other.into_iter().chain(lower) {
        entry.apply_to(merged.entry(key.to_uppercase()).or_default());
    }
    Ok(merged)
}

/// Problems of the `jurisdictions` table, each naming its key (`jurisdictions.SG.token`).
pub(crate) fn problems(
    jurisdictions: &BTreeMap<String, JurisdictionSettings>,
) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    for (code, settings) in jurisdictions {
        let key = format!("jurisdictions.{code}");
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(ConfigProblem::new(
                &key,
                format!("{code:?} is not an ISO 3166-1 alpha-2 jurisdiction code"),
            ));
        }
        if settings.document_api_url.is_empty() {
            problems.push(ConfigProblem::new(
                format!("{key}.document_api_url"),
                "is required",
            ));
        } else if let Some(message) = http_url_problem(&settings.document_api_url) {
            problems.push(ConfigProblem::new(
                format!("{key}.document_api_url"),
                message,
            ));
        }
        if let Some(token) = &settings.token {
            let token = token.expose_secret();
            if token.is_empty() {
                problems.push(ConfigProblem::new(
                    format!("{key}.token"),
                    "must not be empty (remove it to send no token)",
                ));
            } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
                // Never repeat the value: it is a secret.
                problems.push(ConfigProblem::new(
                    format!("{key}.token"),
                    "must be visible ASCII characters only (no spaces or control characters)",
                ));
            }
        }
    }
    problems
}

/// Problems of `node.public_url`, the base URL channels call back.
pub(crate) fn public_url_problems(public_url: Option<&str>) -> Vec<ConfigProblem> {
    public_url
        .and_then(http_url_problem)
        .map(|message| ConfigProblem::new("node.public_url", message))
        .into_iter()
        .collect()
}

/// Why `value` is not an absolute `http:`/`https:` URL with a host, without query or
/// fragment.
fn http_url_problem(value: &str) -> Option<String> {
    match url::Url::parse(value) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            Some(format!("{value:?} must be an http: or https: URL"))
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            Some(format!("{value:?} has no host"))
        }
        Ok(url) if url.query().is_some() || url.fragment().is_some() => Some(format!(
            "{value:?} must not have a query or fragment (it is a base URL)"
        )),
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            Some("must not contain credentials (use the token setting instead)".to_owned())
        }
        Ok(_) => None,
        Err(error) => Some(format!("{value:?} is not a URL: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, Vec<String>> {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("igl.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()));
        Settings::load(Some(&path), env).map_err(|error| {
            // Without the origin (" (from file …)"), which names the temporary file.
            error
                .problems()
                .iter()
                .map(|problem| ConfigProblem {
                    origin: None,
                    ..problem.clone()
                })
                .map(|problem| problem.to_string())
                .collect()
        })
    }

    #[test]
    fn defaults_have_no_jurisdictions() {
        let settings = load("", &[]).unwrap();
        assert!(settings.jurisdictions.is_empty());
        assert_eq!(settings.node.public_url, None);
    }

    #[test]
    fn entries_load_and_the_environment_adds_the_token() {
        let settings = load(
            "[node]\npublic_url = \"https://au.example.org/igl\"\n\
             [jurisdictions.SG]\ndocument_api_url = \"https://sg.example.org/\"\n\
             [jurisdictions.nz]\ndocument_api_url = \"http://127.0.0.1:9000\"\nlegacy_document_api = true\n",
            &[("IGL_JURISDICTIONS__SG__TOKEN", "s3cr3t-token")],
        )
        .unwrap();
        assert_eq!(
            settings.node.public_url.as_deref(),
            Some("https://au.example.org/igl")
        );
        let sg = &settings.jurisdictions["SG"];
        assert_eq!(sg.document_api_url, "https://sg.example.org/");
        assert_eq!(
            sg.token.as_ref().map(SecretString::expose_secret),
            Some("s3cr3t-token")
        );
        assert!(!sg.legacy_document_api);
        let nz = &settings.jurisdictions["NZ"];
        assert!(nz.legacy_document_api);
        assert_eq!(nz.token, None);
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let settings = load(
            "[jurisdictions.SG]\ndocument_api_url = \"https://old.example.org/\"\n",
            &[(
                "IGL_JURISDICTIONS__SG__DOCUMENT_API_URL",
                "https://new.example.org/",
            )],
        )
        .unwrap();
        assert_eq!(settings.jurisdictions.len(), 1);
        assert_eq!(
            settings.jurisdictions["SG"].document_api_url,
            "https://new.example.org/"
        );
    }

    #[test]
    fn problems_name_the_key() {
        let problems = load(
            "[node]\npublic_url = \"ftp://x\"\n\
             [jurisdictions.SGP]\ndocument_api_url = \"https://sg.example.org/\"\n\
             [jurisdictions.NZ]\ntoken = \"has space\"\n\
             [jurisdictions.GB]\ndocument_api_url = \"https://user:pw@gb.example.org/?x=1\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "node.public_url: \"ftp://x\" must be an http: or https: URL",
                "jurisdictions.GB.document_api_url: \"https://user:pw@gb.example.org/?x=1\" must not have a query or fragment (it is a base URL)",
                "jurisdictions.NZ.document_api_url: is required",
                "jurisdictions.NZ.token: must be visible ASCII characters only (no spaces or control characters)",
                "jurisdictions.SGP: \"SGP\" is not an ISO 3166-1 alpha-2 jurisdiction code",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let problems = load(
            "[jurisdictions.SG]\ndocument_api_url = \"https://sg.example.org/\"\ntokn = \"x\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("unknown field \"tokn\""),
            "{problems:?}"
        );
    }
}
