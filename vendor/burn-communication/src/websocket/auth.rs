//! Patched (fp8-trainer): who may connect, and where servers listen.
//!
//! - [`set_bind_host`]: the host every server of this process binds (the published crate bound
//!   `0.0.0.0`, every interface, whatever address the job gave).
//! - [`set_secret`]: a shared secret. Every connection then starts with a mutual
//!   challenge-response before any message of the protocol is read or sent: the server sends a
//!   random 32-byte nonce `s`; the client answers with its own nonce `c` and
//!   `HMAC-SHA256(secret, "client" | s | c)`; the server checks it (in constant time) and
//!   answers `HMAC-SHA256(secret, "server" | c | s)`, which the client checks. The secret never
//!   crosses the wire; a peer without it, or with another one, is closed after at most one
//!   short message and [`HANDSHAKE_TIMEOUT`]. Without a secret nothing is exchanged (the
//!   published protocol).

use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
static BIND_HOST: OnceLock<String> = OnceLock::new();

/// How long either side waits for the other's part of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of a nonce and of a MAC.
const LEN: usize = 32;

/// Label of every MAC, so a MAC of this protocol is never one of another use of the secret.
const DOMAIN: &[u8] = b"fp8-trainer collective handshake v1";

/// Sets the shared secret of every connection this process makes or accepts (once; later calls
/// are ignored). Returns false when one was already set.
pub fn set_secret(secret: Vec<u8>) -> bool {
    SECRET.set(secret).is_ok()
}

/// Sets the host the servers of this process bind (once). Default: `127.0.0.1`.
pub fn set_bind_host(host: String) -> bool {
    BIND_HOST.set(host).is_ok()
}

/// The host servers bind.
pub(crate) fn bind_host() -> &'static str {
    BIND_HOST.get().map_or("127.0.0.1", String::as_str)
}

pub(crate) fn secret() -> Option<&'static [u8]> {
    SECRET.get().map(Vec::as_slice)
}

fn mac(secret: &[u8], role: &[u8], first: &[u8], second: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(DOMAIN);
    mac.update(role);
    mac.update(first);
    mac.update(second);
    mac
}

/// A fresh random nonce (the operating system's generator).
pub(crate) fn nonce() -> Result<[u8; LEN], String> {
    let mut n = [0u8; LEN];
    getrandom::fill(&mut n).map_err(|e| format!("no random nonce: {e}"))?;
    Ok(n)
}

/// The client's answer to the server's nonce: its nonce and its MAC.
pub(crate) fn client_answer(
    secret: &[u8],
    server_nonce: &[u8],
) -> Result<([u8; LEN], Vec<u8>), String> {
    if server_nonce.len() != LEN {
        return Err(format!(
            "a challenge of {} bytes, not {LEN}",
            server_nonce.len()
        ));
    }
    let own = nonce()?;
    let mut answer = own.to_vec();
    answer.extend(
        mac(secret, b"client", server_nonce, &own)
            .finalize()
            .into_bytes(),
    );
    Ok((own, answer))
}

/// The server's check of a client's answer; on success, the server's proof for the client.
pub(crate) fn server_check(
    secret: &[u8],
    server_nonce: &[u8],
    answer: &[u8],
) -> Result<Vec<u8>, String> {
    if answer.len() != 2 * LEN {
        return Err(format!(
            "an answer of {} bytes, not {}",
            answer.len(),
            2 * LEN
        ));
    }
    let (client_nonce, tag) = answer.split_at(LEN);
    mac(secret, b"client", server_nonce, client_nonce)
        .verify_slice(tag)
        .map_err(|_| "a wrong MAC (another secret, or none)".to_string())?;
    Ok(mac(secret, b"server", client_nonce, server_nonce)
        .finalize()
        .into_bytes()
        .to_vec())
}

/// The client's check of the server's proof.
pub(crate) fn client_check(
    secret: &[u8],
    server_nonce: &[u8],
    own: &[u8],
    proof: &[u8],
) -> Result<(), String> {
    mac(secret, b"server", own, server_nonce)
        .verify_slice(proof)
        .map_err(|_| "the server does not hold the secret".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_passes_with_one_secret_and_fails_with_two() {
        let server_nonce = nonce().unwrap();
        let (own, answer) = client_answer(b"secret", &server_nonce).unwrap();
        let proof = server_check(b"secret", &server_nonce, &answer).unwrap();
        client_check(b"secret", &server_nonce, &own, &proof).unwrap();
        // Another secret on either side.
        assert!(server_check(b"other", &server_nonce, &answer).is_err());
        assert!(client_check(b"other", &server_nonce, &own, &proof).is_err());
        // An answer to another challenge, a truncated one, a flipped bit.
        let replayed = server_check(b"secret", &nonce().unwrap(), &answer);
        assert!(replayed.is_err());
        assert!(server_check(b"secret", &server_nonce, &answer[..63]).is_err());
        let mut flipped = answer.clone();
        flipped[40] ^= 1;
        assert!(server_check(b"secret", &server_nonce, &flipped).is_err());
    }
}
