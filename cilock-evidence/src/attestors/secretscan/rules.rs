//! Detection rules: the credential formats secretscan recognises, after
//! Gitleaks' default rules (ids and descriptions follow Gitleaks so policies
//! written against Witness findings keep working).

use std::sync::OnceLock;

use regex::Regex;

/// One detection rule.
#[derive(Debug)]
pub struct Rule {
    /// Rule id (`github-pat`, …).
    pub id: &'static str,
    /// What a finding of this rule means.
    pub description: &'static str,
    /// The pattern.
    pub regex: Regex,
    /// The capture group holding the secret (0 = the whole match).
    pub group: usize,
    /// Minimum Shannon entropy of the secret (0 = none).
    pub min_entropy: f32,
    /// The secret must contain a digit (cuts prose false positives).
    pub needs_digit: bool,
    /// Lower-case keywords, one of which must appear in the text.
    pub keywords: &'static [&'static str],
}

/// Id of the generic high-entropy assignment rule (its findings yield to
/// any specific rule that found the same secret).
pub const GENERIC_RULE: &str = "generic-api-key";

struct Def {
    id: &'static str,
    description: &'static str,
    pattern: &'static str,
    group: usize,
    min_entropy: f32,
    needs_digit: bool,
    keywords: &'static [&'static str],
}

const DEFS: &[Def] = &[
    Def {
        id: "github-pat",
        description: "Uncovered a GitHub Personal Access Token, potentially leading to unauthorized repository access and sensitive content exposure.",
        pattern: r"ghp_[0-9a-zA-Z]{36}",
        group: 0,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["ghp_"],
    },
    Def {
        id: "github-fine-grained-pat",
        description: "Found a GitHub Fine-Grained Personal Access Token, risking unauthorized repository access and code manipulation.",
        pattern: r"github_pat_[0-9a-zA-Z_]{82}",
        group: 0,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["github_pat_"],
    },
    Def {
        id: "github-oauth",
        description: "Discovered a GitHub OAuth Access Token, posing a risk of compromised GitHub account integrations and data leaks.",
        pattern: r"gho_[0-9a-zA-Z]{36}",
        group: 0,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["gho_"],
    },
    Def {
        id: "github-app-token",
        description: "Identified a GitHub App Token, which may compromise GitHub application integrations and source code security.",
        pattern: r"(?:ghu|ghs)_[0-9a-zA-Z]{36}",
        group: 0,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["ghu_", "ghs_"],
    },
    Def {
        id: "github-refresh-token",
        description: "Detected a GitHub Refresh Token, which could allow prolonged unauthorized access to GitHub services.",
        pattern: r"ghr_[0-9a-zA-Z]{36}",
        group: 0,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["ghr_"],
    },
    Def {
        id: "aws-access-token",
        description: "Identified a pattern that may indicate AWS credentials, risking unauthorized cloud resource access and data breaches on AWS platforms.",
        pattern: r"\b((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})\b",
        group: 1,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["a3t", "akia", "asia", "abia", "acca"],
    },
    Def {
        id: "aws-secret-access-key",
        description: "Detected an AWS Secret Access Key assignment, which grants programmatic access to AWS resources.",
        pattern: r#"(?i)\baws[a-z0-9_.\-]{0,20}?(?:secret|sk)[a-z0-9_.\-]{0,20}?["']?\s*(?:=|:=|:|=>)\s*["']?([A-Za-z0-9/+=]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        group: 1,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["aws"],
    },
    Def {
        id: "private-key",
        description: "Identified a Private Key, which may compromise cryptographic security and sensitive data encryption.",
        pattern: r"(?i)-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----[\s\S-]{64,}?KEY(?: BLOCK)?-----",
        group: 0,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["-----begin"],
    },
    Def {
        id: "slack-bot-token",
        description: "Identified a Slack Bot token, which may compromise bot integrations and communication channel security.",
        pattern: r"xoxb-[0-9]{10,13}-[0-9]{10,13}[a-zA-Z0-9-]*",
        group: 0,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["xoxb"],
    },
    Def {
        id: "slack-user-token",
        description: "Found a Slack User token, posing a risk of unauthorized user impersonation and data access within Slack workspaces.",
        pattern: r"xox[pe](?:-[0-9]{10,13}){3}-[a-zA-Z0-9-]{28,34}",
        group: 0,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["xoxp-", "xoxe-"],
    },
    Def {
        id: "slack-app-token",
        description: "Detected a Slack App-level token, risking unauthorized access to Slack applications and workspace data.",
        pattern: r"(?i)xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+",
        group: 0,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["xapp"],
    },
    Def {
        id: "slack-legacy-token",
        description: "Detected a Slack Legacy token, risking unauthorized access to older Slack integrations and user data.",
        pattern: r"xox[os]-\d+-\d+-\d+-[a-fA-F\d]+",
        group: 0,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["xoxo", "xoxs"],
    },
    Def {
        id: "slack-webhook-url",
        description: "Discovered a Slack Webhook, which could lead to unauthorized message posting and data leakage in Slack channels.",
        pattern: r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56}",
        group: 0,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["hooks.slack.com"],
    },
    Def {
        id: "gcp-api-key",
        description: "Uncovered a GCP API key, which could lead to unauthorized access to Google Cloud services and data breaches.",
        pattern: r"\b(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)",
        group: 1,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["aiza"],
    },
    Def {
        id: "gcp-service-account",
        description: "Found a Google Cloud service-account key (private_key_id), which grants access to GCP resources as that account.",
        pattern: r#""private_key_id"\s*:\s*"([0-9a-f]{40})""#,
        group: 1,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["private_key_id"],
    },
    Def {
        id: "npm-access-token",
        description: "Uncovered an npm access token, potentially compromising package management and code repository access.",
        pattern: r"(?i)\b(npm_[a-z0-9]{36})(?:[^a-z0-9]|$)",
        group: 1,
        min_entropy: 2.0,
        needs_digit: false,
        keywords: &["npm_"],
    },
    Def {
        id: "pypi-upload-token",
        description: "Discovered a PyPI upload token, potentially compromising Python package distribution and repository integrity.",
        pattern: r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9\-_]{50,1000}",
        group: 0,
        min_entropy: 0.0,
        needs_digit: false,
        keywords: &["pypi-ageichlwas5vcmc"],
    },
    Def {
        id: "jwt",
        description: "Uncovered a JSON Web Token, which may lead to unauthorized access to web applications and sensitive user data.",
        pattern: r"\b(ey[a-zA-Z0-9]{17,}\.ey[a-zA-Z0-9/\\_-]{17,}\.(?:[a-zA-Z0-9/\\_-]{10,}={0,2})?)(?:['|\x22\n\r\s\x60;]|$)",
        group: 1,
        min_entropy: 3.0,
        needs_digit: false,
        keywords: &["ey"],
    },
    Def {
        id: GENERIC_RULE,
        description: "Detected a Generic API Key, potentially exposing access to various services and sensitive operations.",
        pattern: r#"(?i)(?:key|api|token|secret|client|passwd|password|auth|access)(?:[0-9a-z\-_\t .]{0,20})(?:[\s|']|[\s|"]){0,3}(?:=|>|:{1,3}=|\|\|:|<=|=>|:|\?=)(?:'|"|\s|=|\x60){0,5}([0-9a-z\-_.=/+]{10,150})(?:['|"\n\r\s\x60;]|$)"#,
        group: 1,
        min_entropy: 3.5,
        needs_digit: true,
        keywords: &["key", "api", "token", "secret", "client", "passwd", "password", "auth", "access"],
    },
];

/// The compiled rules.
pub fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        DEFS.iter()
            .filter_map(|d| {
                // The patterns are constants covered by tests; a pattern that
                // failed to compile would only drop its rule.
                Regex::new(d.pattern).ok().map(|regex| Rule {
                    id: d.id,
                    description: d.description,
                    regex,
                    group: d.group,
                    min_entropy: d.min_entropy,
                    needs_digit: d.needs_digit,
                    keywords: d.keywords,
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        assert_eq!(rules().len(), DEFS.len());
    }
}
