//! Client certificates (mTLS) as credentials, decided without I/O: an API's `mtls` setting, what the
//! zone said about the connection's certificate (`request.cf.tlsClientAuth`, never a header), which
//! consumer's mTLS credential it matches, and how it combines with the request's other credential.

use serde::{Deserialize, Serialize};

use crate::auth::decide::Caller;
use crate::error::{Error, Problem};

/// Whether an API takes client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    /// Certificates are ignored.
    #[default]
    Off,
    /// A verified, registered certificate is a credential on its own.
    Accept,
    /// Every request needs a verified, registered certificate and the mode's credential, of the
    /// same consumer.
    Require,
}

impl MtlsMode {
    pub fn parse(s: &str) -> Result<MtlsMode, Error> {
        match s {
            "off" => Ok(MtlsMode::Off),
            "accept" => Ok(MtlsMode::Accept),
            "require" => Ok(MtlsMode::Require),
            _ => Err(
                Error::invalid_request("`mtls` is one of `off`, `accept`, `require`")
                    .with_field("param", "mtls"),
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Off => "off",
            MtlsMode::Accept => "accept",
            MtlsMode::Require => "require",
        }
    }
}

/// The zone's word on the connection's client certificate, as `request.cf.tlsClientAuth` has it
/// (every field empty when there is none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAuth {
    /// `"1"` when the client presented a certificate.
    pub presented: String,
    /// `"SUCCESS"`, `"NONE"` or `"FAILED:<reason>"`.
    pub verified: String,
    pub fingerprint_sha256: String,
    pub issuer_dn: String,
    pub subject_dn: String,
    /// `"1"` when the certificate was revoked (it still reports `SUCCESS`).
    pub revoked: String,
}

/// A certificate the zone verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    /// Normalised (lowercase hex), when the zone gave a well-formed one.
    pub fingerprint: Option<String>,
    pub issuer_dn: String,
    pub subject_dn: String,
}

/// A certificate, or why the request has none that counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    Verified(VerifiedCertificate),
    /// None presented (`NONE`, or no `tlsClientAuth` at all).
    Absent,
    /// Presented, but the zone did not verify it (`FAILED:<reason>`, or anything but `SUCCESS`).
    Unverified(String),
}

impl ClientAuth {
    /// Only `certPresented == "1"` with `certVerified == "SUCCESS"` is a certificate.
    pub fn certificate(&self) -> Certificate {
        let verified = self.verified.trim();
        if self.presented.trim() != "1" || verified.is_empty() || verified == "NONE" {
            return Certificate::Absent;
        }
        if verified != "SUCCESS" {
            return Certificate::Unverified(verified.chars().take(200).collect());
        }
        // A revoked certificate still verifies; Cloudflare flags it apart.
        if self.revoked.trim() == "1" {
            return Certificate::Unverified("REVOKED".into());
        }
        Certificate::Verified(VerifiedCertificate {
            fingerprint: normalise_fingerprint(&self.fingerprint_sha256),
            issuer_dn: self.issuer_dn.trim().to_string(),
            subject_dn: self.subject_dn.trim().to_string(),
        })
    }
}

/// A SHA-256 fingerprint as lowercase hex without separators (`AB:CD …` and `ab cd …` too); `None`
/// unless that leaves exactly 64 hex digits.
pub fn normalise_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// What a consumer's mTLS credential names: one certificate by fingerprint, or every certificate
/// with this issuer and subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsCredential {
    pub id: String,
    pub consumer_id: String,
    pub fingerprint_sha256: Option<String>,
    pub issuer_dn: Option<String>,
    pub subject_dn: Option<String>,
    pub created_at: i64,
}

/// `POST .../consumers/{id}/mtls-credentials`: a fingerprint, or an issuer and a subject DN.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMtlsCredential {
    pub fingerprint_sha256: Option<String>,
    pub issuer_dn: Option<String>,
    pub subject_dn: Option<String>,
}

/// What a new credential names, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateName {
    Fingerprint(String),
    Dn { issuer: String, subject: String },
}

fn dn(field: &str, v: &str) -> Result<String, Error> {
    let v = v.trim();
    if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
        return Err(Error::invalid_request(format!(
            "`{field}` must be 1-1024 printable characters (the DN as Cloudflare reports it)"
        ))
        .with_field("param", field));
    }
    Ok(v.to_string())
}

impl NewMtlsCredential {
    pub fn validate(&self) -> Result<CertificateName, Error> {
        match (&self.fingerprint_sha256, &self.issuer_dn, &self.subject_dn) {
            (Some(f), None, None) => normalise_fingerprint(f)
                .map(CertificateName::Fingerprint)
                .ok_or_else(|| {
                    Error::invalid_request(
                        "`fingerprint_sha256` must be 64 hex digits (colons and spaces allowed)",
                    )
                    .with_field("param", "fingerprint_sha256")
                }),
            (None, Some(i), Some(s)) => Ok(CertificateName::Dn {
                issuer: dn("issuer_dn", i)?,
                subject: dn("subject_dn", s)?,
            }),
            (Some(_), _, _) => Err(Error::invalid_request(
                "Send either `fingerprint_sha256` or `issuer_dn` and `subject_dn`, not both",
            )
            .with_field("param", "fingerprint_sha256")),
            (None, None, _) => Err(Error::invalid_request(
                "Send `fingerprint_sha256`, or `issuer_dn` and `subject_dn`",
            )
            .with_field(
                "param",
                if self.subject_dn.is_some() {
                    "issuer_dn"
                } else {
                    "fingerprint_sha256"
                },
            )),
            (None, Some(_), None) => {
                Err(Error::invalid_request("`issuer_dn` needs its `subject_dn`")
                    .with_field("param", "subject_dn"))
            }
        }
    }
}

/// The live credential a verified certificate matches: by fingerprint first, else by issuer and
/// subject DN (credentials named by fingerprint never match by DN).
pub fn holder<'a>(
    cert: &VerifiedCertificate,
    live: &'a [MtlsCredential],
) -> Option<&'a MtlsCredential> {
    if let Some(fp) = &cert.fingerprint {
        if let Some(c) = live
            .iter()
            .find(|c| c.fingerprint_sha256.as_deref() == Some(fp.as_str()))
        {
            return Some(c);
        }
    }
    if cert.issuer_dn.is_empty() || cert.subject_dn.is_empty() {
        return None;
    }
    live.iter().find(|c| {
        c.fingerprint_sha256.is_none()
            && c.issuer_dn.as_deref() == Some(cert.issuer_dn.as_str())
            && c.subject_dn.as_deref() == Some(cert.subject_dn.as_str())
    })
}

/// A certificate's caller: its credential stands in for a key (the counter refuses it once revoked).
pub fn by_certificate(credential: &MtlsCredential) -> Caller {
    Caller {
        consumer_id: credential.consumer_id.clone(),
        key_id: Some(credential.id.clone()),
        session_id: None,
        dpop_jti: None,
        certificate_id: None,
    }
}

/// The certificate's part in a request, before the other credential is read: `Ok(Some(caller))`
/// when it proves a consumer, `Ok(None)` when the other credential alone decides, or the refusal.
/// `found` is the matching live credential of a verified certificate (see `holder`).
pub fn certificate_caller(
    mode: MtlsMode,
    cert: &Certificate,
    found: Option<&MtlsCredential>,
) -> Result<Option<Caller>, Error> {
    match (mode, cert) {
        (MtlsMode::Off, _) => Ok(None),
        (_, Certificate::Verified(_)) => match found {
            Some(c) => Ok(Some(by_certificate(c))),
            None if mode == MtlsMode::Require => Err(unknown_certificate()),
            // Accept: an unregistered certificate proves nothing; another credential may.
            None => Ok(None),
        },
        (MtlsMode::Require, Certificate::Absent) => Err(Error::new(
            Problem::MissingCredential,
            "This API requires a client certificate (mTLS), verified by the zone.",
        )),
        (MtlsMode::Require, Certificate::Unverified(why)) => Err(Error::invalid_credential(
            format!("The client certificate was not verified: {why}."),
        )),
        (MtlsMode::Accept, _) => Ok(None),
    }
}

/// Combines the certificate's caller with the request's other credential (`None`: none was sent;
/// `Some(Err)`: it was refused). Accept: the other credential decides when sent, the certificate
/// otherwise. Require: both are needed. Both present must name one consumer (403 otherwise).
pub fn combine(
    mode: MtlsMode,
    cert: &Certificate,
    by_cert: Option<Caller>,
    other: Option<Result<Caller, Error>>,
) -> Result<Caller, Error> {
    let other = match other {
        Some(result) => result?,
        None => {
            return match (mode, by_cert) {
                (MtlsMode::Require, _) => Err(Error::missing_credential()),
                (_, Some(caller)) => Ok(caller),
                (_, None) => Err(match cert {
                    Certificate::Verified(_) => unknown_certificate(),
                    Certificate::Unverified(why) => Error::invalid_credential(format!(
                        "The client certificate was not verified: {why}."
                    )),
                    Certificate::Absent => Error::missing_credential(),
                }),
            };
        }
    };
    match by_cert {
        Some(c) if c.consumer_id != other.consumer_id => Err(Error::new(
            Problem::CertificateMismatch,
            "The client certificate and the credential belong to different consumers.",
        )),
        // The certificate's credential goes to the counter too, so revoking it is exact.
        Some(c) => Ok(Caller {
            certificate_id: c.key_id,
            ..other
        }),
        None => Ok(other),
    }
}

/// A verified certificate that no live mTLS credential of the project names.
pub fn unknown_certificate() -> Error {
    Error::invalid_credential("This client certificate is not registered for any consumer.")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "3f4ad1e0b5c0c7e8e9d1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    fn auth(presented: &str, verified: &str, fp: &str) -> ClientAuth {
        ClientAuth {
            presented: presented.into(),
            verified: verified.into(),
            fingerprint_sha256: fp.into(),
            issuer_dn: "CN=Acme CA,O=Acme".into(),
            subject_dn: "CN=client-1,O=Acme".into(),
            revoked: "0".into(),
        }
    }

    fn cred(
        id: &str,
        consumer: &str,
        fp: Option<&str>,
        dn: Option<(&str, &str)>,
    ) -> MtlsCredential {
        MtlsCredential {
            id: id.into(),
            consumer_id: consumer.into(),
            fingerprint_sha256: fp.map(Into::into),
            issuer_dn: dn.map(|d| d.0.into()),
            subject_dn: dn.map(|d| d.1.into()),
            created_at: 0,
        }
    }

    fn caller(consumer: &str) -> Caller {
        Caller {
            consumer_id: consumer.into(),
            key_id: Some("key_1".into()),
            session_id: None,
            dpop_jti: None,
            certificate_id: None,
        }
    }

    fn verified() -> Certificate {
        auth("1", "SUCCESS", FP).certificate()
    }

    #[test]
    fn fingerprints_are_normalised_to_64_lowercase_hex_digits() {
        let colons = FP
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(normalise_fingerprint(&colons).as_deref(), Some(FP));
        assert_eq!(
            normalise_fingerprint(&format!(" {} ", colons.replace(':', " "))).as_deref(),
            Some(FP)
        );
        assert_eq!(normalise_fingerprint(&FP[..62]), None, "too short");
        assert_eq!(normalise_fingerprint(&format!("{FP}00")), None, "too long");
        assert_eq!(
            normalise_fingerprint(&FP.replace('3', "g")),
            None,
            "not hex"
        );
        assert_eq!(normalise_fingerprint(""), None);
    }

    #[test]
    fn only_a_presented_certificate_verified_with_success_counts() {
        assert!(
            matches!(verified(), Certificate::Verified(v) if v.fingerprint.as_deref() == Some(FP))
        );
        assert_eq!(auth("0", "NONE", "").certificate(), Certificate::Absent);
        assert_eq!(ClientAuth::default().certificate(), Certificate::Absent);
        assert_eq!(
            auth("1", "FAILED:certificate has expired", FP).certificate(),
            Certificate::Unverified("FAILED:certificate has expired".into())
        );
        assert_eq!(
            auth("0", "SUCCESS", FP).certificate(),
            Certificate::Absent,
            "SUCCESS without a presented certificate is not one"
        );
        assert!(matches!(
            auth("1", "success", FP).certificate(),
            Certificate::Unverified(_)
        ));
        // A revoked certificate still says SUCCESS; its own flag says revoked.
        let revoked = ClientAuth {
            revoked: "1".into(),
            ..auth("1", "SUCCESS", FP)
        };
        assert_eq!(
            revoked.certificate(),
            Certificate::Unverified("REVOKED".into())
        );
    }

    #[test]
    fn a_certificate_finds_its_credential_by_fingerprint_first_then_by_dn() {
        let by_dn = cred(
            "mtc_dn",
            "con_dn",
            None,
            Some(("CN=Acme CA,O=Acme", "CN=client-1,O=Acme")),
        );
        let by_fp = cred("mtc_fp", "con_fp", Some(FP), None);
        let Certificate::Verified(cert) = verified() else {
            panic!()
        };
        let live = [by_dn.clone(), by_fp.clone()];
        assert_eq!(holder(&cert, &live).map(|c| c.id.as_str()), Some("mtc_fp"));
        let other_fp = VerifiedCertificate {
            fingerprint: Some("0".repeat(64)),
            ..cert.clone()
        };
        assert_eq!(
            holder(&other_fp, &live).map(|c| c.id.as_str()),
            Some("mtc_dn")
        );
        let other_subject = VerifiedCertificate {
            subject_dn: "CN=client-2,O=Acme".into(),
            ..other_fp.clone()
        };
        assert_eq!(holder(&other_subject, &live), None);
        let fp_cred_with_dn = cred(
            "mtc_x",
            "c",
            Some(FP),
            Some(("CN=Acme CA,O=Acme", "CN=client-1,O=Acme")),
        );
        assert_eq!(
            holder(&other_fp, &[fp_cred_with_dn]),
            None,
            "a fingerprint credential never matches by DN"
        );
    }

    #[test]
    fn off_ignores_certificates() {
        for cert in [
            verified(),
            Certificate::Absent,
            Certificate::Unverified("FAILED:x".into()),
        ] {
            assert_eq!(certificate_caller(MtlsMode::Off, &cert, None), Ok(None));
        }
    }

    #[test]
    fn accept_takes_a_registered_certificate_alone() {
        let c = cred("mtc_1", "con_1", Some(FP), None);
        let by_cert = certificate_caller(MtlsMode::Accept, &verified(), Some(&c)).unwrap();
        assert_eq!(
            by_cert.as_ref().map(|c| c.key_id.as_deref()),
            Some(Some("mtc_1"))
        );
        let alone = combine(MtlsMode::Accept, &verified(), by_cert.clone(), None).unwrap();
        assert_eq!(alone.consumer_id, "con_1");
        // The other credential decides when sent: its key is the one the counter checks.
        let both = combine(
            MtlsMode::Accept,
            &verified(),
            by_cert.clone(),
            Some(Ok(caller("con_1"))),
        )
        .unwrap();
        assert_eq!(both.key_id.as_deref(), Some("key_1"));
        let e = combine(
            MtlsMode::Accept,
            &verified(),
            by_cert.clone(),
            Some(Ok(caller("con_2"))),
        )
        .unwrap_err();
        assert_eq!((e.status, e.kind()), (403, "certificate-mismatch"));
        let e = combine(
            MtlsMode::Accept,
            &verified(),
            by_cert,
            Some(Err(Error::invalid_credential("bad"))),
        )
        .unwrap_err();
        assert_eq!(
            e.status, 401,
            "a refused credential is refused, certificate or not"
        );
    }

    #[test]
    fn accept_without_a_usable_certificate_is_todays_credential_check() {
        for cert in [
            verified(),
            Certificate::Absent,
            Certificate::Unverified("FAILED:x".into()),
        ] {
            let by_cert = certificate_caller(MtlsMode::Accept, &cert, None).unwrap();
            assert_eq!(by_cert, None);
            assert_eq!(
                combine(MtlsMode::Accept, &cert, None, Some(Ok(caller("con_1"))))
                    .unwrap()
                    .consumer_id,
                "con_1"
            );
        }
        let kinds: Vec<&str> = [
            verified(),
            Certificate::Absent,
            Certificate::Unverified("FAILED:x".into()),
        ]
        .iter()
        .map(|cert| {
            combine(MtlsMode::Accept, cert, None, None)
                .unwrap_err()
                .kind()
        })
        .collect();
        assert_eq!(
            kinds,
            [
                "invalid-credential",
                "missing-credential",
                "invalid-credential"
            ]
        );
    }

    #[test]
    fn require_needs_a_registered_certificate_and_the_credential_of_the_same_consumer() {
        let c = cred("mtc_1", "con_1", Some(FP), None);
        for (cert, kind) in [
            (Certificate::Absent, "missing-credential"),
            (
                auth("1", "FAILED:certificate has expired", FP).certificate(),
                "invalid-credential",
            ),
        ] {
            let e = certificate_caller(MtlsMode::Require, &cert, Some(&c)).unwrap_err();
            assert_eq!((e.status, e.kind()), (401, kind));
        }
        let e = certificate_caller(MtlsMode::Require, &verified(), None).unwrap_err();
        assert_eq!(
            (e.status, e.kind()),
            (401, "invalid-credential"),
            "an unknown certificate"
        );
        let by_cert = certificate_caller(MtlsMode::Require, &verified(), Some(&c)).unwrap();
        let e = combine(MtlsMode::Require, &verified(), by_cert.clone(), None).unwrap_err();
        assert_eq!(
            (e.status, e.kind()),
            (401, "missing-credential"),
            "the certificate alone is not enough"
        );
        let e = combine(
            MtlsMode::Require,
            &verified(),
            by_cert.clone(),
            Some(Ok(caller("con_2"))),
        )
        .unwrap_err();
        assert_eq!((e.status, e.kind()), (403, "certificate-mismatch"));
        let ok = combine(
            MtlsMode::Require,
            &verified(),
            by_cert,
            Some(Ok(caller("con_1"))),
        )
        .unwrap();
        assert_eq!(
            (ok.consumer_id.as_str(), ok.key_id.as_deref()),
            ("con_1", Some("key_1"))
        );
        assert_eq!(
            ok.certificate_id.as_deref(),
            Some("mtc_1"),
            "the counter also checks the certificate's credential"
        );
    }

    #[test]
    fn new_credentials_name_a_fingerprint_or_both_dns() {
        let parse = |body: &str| {
            crate::input::parse_body::<NewMtlsCredential>(body.as_bytes())
                .and_then(|n| n.validate())
        };
        assert_eq!(
            parse(&format!(
                r#"{{"fingerprint_sha256":"{}"}}"#,
                FP.to_uppercase()
            )),
            Ok(CertificateName::Fingerprint(FP.into()))
        );
        assert_eq!(
            parse(r#"{"issuer_dn":" CN=CA ","subject_dn":"CN=c"}"#),
            Ok(CertificateName::Dn {
                issuer: "CN=CA".into(),
                subject: "CN=c".into()
            })
        );
        for (body, param) in [
            (r#"{"fingerprint_sha256":"abc"}"#, "fingerprint_sha256"),
            (r#"{}"#, "fingerprint_sha256"),
            (r#"{"issuer_dn":"CN=CA"}"#, "subject_dn"),
            (r#"{"subject_dn":"CN=c"}"#, "issuer_dn"),
            (r#"{"issuer_dn":"  ","subject_dn":"CN=c"}"#, "issuer_dn"),
            (
                r#"{"issuer_dn":"CN=CA","subject_dn":"CN=\u0000"}"#,
                "subject_dn",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(
                (e.status, e.extra["param"].as_str()),
                (400, Some(param)),
                "{body}"
            );
        }
        let both = format!(r#"{{"fingerprint_sha256":"{FP}","issuer_dn":"a","subject_dn":"b"}}"#);
        assert_eq!(parse(&both).unwrap_err().status, 400);
        assert_eq!(
            parse(r#"{"fingerprint":"x"}"#).unwrap_err().status,
            400,
            "unknown fields are refused"
        );
        assert_eq!(MtlsMode::parse("require"), Ok(MtlsMode::Require));
        assert_eq!(MtlsMode::parse("on").unwrap_err().extra["param"], "mtls");
    }
}
