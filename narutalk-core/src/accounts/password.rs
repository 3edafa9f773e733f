//! Password hashing: argon2id at OWASP's parameters, stored as PHC strings.
//!
//! Argon2 is memory-hard on purpose: each hash or verification fills 19 MiB. That memory
//! is reused, not allocated per call: at most one buffer per core exists, and a call
//! beyond that waits for one. More hashes at once than cores would only share the same
//! CPU more slowly while holding more memory, so the bound costs no throughput and keeps
//! a flood of logins from growing the process by 19 MiB per waiting request (the
//! allocator keeps such large blocks once they are freed).

use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::error::Error;

/// OWASP's argon2id minimum: 19 MiB of memory, 2 passes, 1 lane.
pub const MEMORY_KIB: u32 = 19_456;
/// Passes over memory.
pub const ITERATIONS: u32 = 2;
/// Lanes.
pub const PARALLELISM: u32 = 1;

/// The hash of a random password that was thrown away when this constant was made: a
/// login for an unknown email verifies against it, so it spends the same work as one for
/// a known email (no account enumeration by timing). Same parameters as [`hash`].
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$PumYMZzOTifn2hYn3BQi9w$yrm0yVqMEbOOsPd1WWQ2+JAzt40rtTV66kSNrcQ+SOg";

fn params() -> Result<Params, Error> {
    Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))
}

/// Hashes `password` with a fresh 16-byte random salt into a PHC string.
pub fn hash(password: &str) -> Result<String, Error> {
    let params = params()?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Internal(format!("random salt: {e}")))?;
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    WORKSPACES
        .with_memory(params.block_count(), |memory| {
            argon2.hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
        })
        .map_err(|e| Error::Internal(format!("argon2: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(format!("salt: {e}")))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output).map_err(|e| Error::Internal(format!("argon2: {e}")))?),
    };
    Ok(phc.to_string())
}

/// True when `password` matches the PHC string `stored` (with the algorithm, version and
/// parameters it records; the comparison takes constant time). A damaged stored hash never
/// matches.
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        parsed
            .version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut output = [0u8; Output::MAX_LENGTH];
    let output = &mut output[..expected.len()];
    let computed = WORKSPACES.with_memory(params.block_count(), |memory| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, output, memory)
    });
    computed.is_ok() && Output::new(output).is_ok_and(|computed| computed == expected)
}

/// Spends one verification's work and answers nothing: used when the email is unknown.
pub fn verify_nothing(password: &str) {
    let _ = verify(password, DUMMY_HASH);
}

/// The reusable argon2 memory: one buffer per core at most.
static WORKSPACES: LazyLock<Workspaces> =
    LazyLock::new(|| Workspaces::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Argon2 working memory, lent one buffer per call, at most `limit` at once.
struct Workspaces {
    pool: Mutex<Pool>,
    returned: Condvar,
    limit: usize,
}

struct Pool {
    idle: Vec<Vec<Block>>,
    lent: usize,
}

/// A buffer on loan; it goes back to the pool (and wakes a waiting call) on drop, also
/// when the hashing panicked.
struct Loan<'a> {
    workspaces: &'a Workspaces,
    memory: Vec<Block>,
}

impl Workspaces {
    fn new(limit: usize) -> Workspaces {
        Workspaces {
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                lent: 0,
            }),
            returned: Condvar::new(),
            limit: limit.max(1),
        }
    }

    /// Runs `f` on `blocks` blocks of working memory, waiting for a buffer when `limit`
    /// calls already hold one. A call that needs more memory than the buffers hold (a
    /// stored hash with a larger `m`) grows its buffer for good: such hashes are rare, and
    /// the pool then fits them too.
    fn with_memory<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let mut loan = self.borrow();
        if loan.memory.len() < blocks {
            loan.memory.resize(blocks, Block::default());
        }
        f(&mut loan.memory[..blocks])
    }

    fn borrow(&self) -> Loan<'_> {
        let mut pool = self.lock();
        loop {
            if let Some(memory) = pool.idle.pop() {
                pool.lent += 1;
                return Loan {
                    workspaces: self,
                    memory,
                };
            }
            if pool.lent + pool.idle.len() < self.limit {
                pool.lent += 1;
                return Loan {
                    workspaces: self,
                    memory: Vec::new(),
                };
            }
            pool = self
                .returned
                .wait(pool)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        let mut pool = self.workspaces.lock();
        pool.lent -= 1;
        pool.idle.push(std::mem::take(&mut self.memory));
        drop(pool);
        self.workspaces.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hashes_are_argon2id_phc_strings_at_owasp_parameters() {
        let stored = hash("correct horse").unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horsE", &stored));
        assert!(
            !verify("correct horse ", &stored),
            "no trimming, no truncation"
        );
    }

    #[test]
    fn the_same_password_gets_a_different_salt_each_time() {
        assert_ne!(hash("same").unwrap(), hash("same").unwrap());
    }

    #[test]
    fn hashes_interoperate_with_the_argon2_crates_own_phc_functions() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Hashes stored before the memory was pooled were made by `hash_password`.
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params().unwrap())
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify("correct horse", &theirs));
        assert!(!verify("correct horsE", &theirs));
        let ours = hash("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let real = hash("anything");
        let real = PasswordHash::new(real.as_deref().unwrap()).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.hash.unwrap().len(), real.hash.unwrap().len());
        assert!(!verify("", DUMMY_HASH));
    }

    #[test]
    fn no_more_buffers_exist_than_the_limit_however_many_calls_come_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let workspaces = Workspaces::new(2);
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        workspaces.with_memory(8, |memory| {
                            assert_eq!(memory.len(), 8);
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            running.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2);
        let pool = workspaces.lock();
        assert_eq!(pool.lent, 0);
        assert!(pool.idle.len() <= 2, "{} buffers", pool.idle.len());
    }

    #[test]
    fn a_damaged_stored_hash_never_matches() {
        assert!(!verify("x", ""));
        assert!(!verify("x", "$argon2id$garbage"));
    }
}
