//! A throwaway PKI for one test API server, generated in-process with `rcgen` (ECDSA P-256):
//! a CA, the server's serving certificate for `127.0.0.1`/`localhost`, the service-account
//! token signing key, and client certificates for arbitrary users on demand.

use std::net::{IpAddr, Ipv4Addr};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// PEM text of a certificate and its private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything the API server and the test clients need.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The server's certificate (signed by the CA) and key.
    pub serving: CertPair,
    /// Service-account token signing key (PKCS#8 PEM) and its public key (SPKI PEM).
    pub sa_signing_key_pem: String,
    pub sa_public_key_pem: String,
}

impl Pki {
    /// Generates a fresh CA, serving certificate and service-account key.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let ca = self_signed_ca("portway-envtest-ca")?;

        let mut serving_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        serving_params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        serving_params.distinguished_name = name("kube-apiserver", None);
        serving_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = issue(&serving_params, &ca)?;

        let sa_key = KeyPair::generate()?;
        Ok(Self {
            serving,
            sa_signing_key_pem: sa_key.serialize_pem(),
            sa_public_key_pem: sa_key.public_key_pem(),
            ca,
        })
    }

    /// The CA certificate (PEM); clients trust it, the server accepts client certs it signed.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA certificate (DER), as kube's `Config::root_cert` wants it.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// A client certificate for `user`, optionally in `group` (the API server maps CN to the
    /// user name and O to a group; rcgen writes one O at most, so use impersonation for users in
    /// several groups).
    pub fn client_cert(&self, user: &str, group: Option<&str>) -> Result<CertPair, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(user, group);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issue(&params, &self.ca)
    }
}

/// A self-signed CA named `common_name` (also the local cluster's, [`crate::cluster::pki`]).
pub(crate) fn self_signed_ca(
    common_name: &str,
) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

/// A certificate for `params` with a fresh key, signed by `ca`.
pub(crate) fn issue(
    params: &CertificateParams,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> Result<CertPair, rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A subject: CN `common_name`, O `organization` if given.
pub(crate) fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
