//! Password hashing: argon2id at OWASP's parameters, stored as PHC strings.
//!
//! Argon2 is CPU- and memory-hard on purpose: each hash or verification takes about 15 ms
//! of a core and fills 19 MiB. So the handle's hashing ([`PasswordHashing`], owned by
//! the `Narutalk` handle, never a process global) runs it on threads of its own, one per
//! core, and the calling thread waits for the result. This is the one bound on hashing:
//!
//! - More hashes at once than cores would only share the same CPU more slowly while
//!   holding more memory, so the bound costs no throughput; [`HASH_QUEUE`] (64) more
//!   wait, and beyond them a hash is refused at once with [`Error::Unavailable`]
//!   ([`HASHING_BUSY`]), which a server answers 503: a flood of logins cannot grow the
//!   process by 19 MiB per waiting request.
//! - Each thread keeps its working memory for the next hash instead of allocating and
//!   zeroing 19 MiB per call, and lets it go after a second without work, so an idle
//!   server does not hold 19 MiB per core.
//! - On Linux the threads run at a lower CPU priority (nice 6): when a login flood and the
//!   rest of the API both want the cores, the rest of the API gets most of them and keeps
//!   its latency. With every core busy, a nice-6 thread weighs 272 against a normal
//!   thread's 1,024, so two hashing threads get about a fifth of the CPU. (At nice 5, a
//!   quarter: once the queued hashes waited here rather than at a server's gate, the
//!   hashing threads never idled between hashes, and `cargo load`'s `login-flood` cost
//!   `health` a fifth of its rate. At nice 7, logins during the flood fell by a fifth.)
//!
//! The free functions [`hash`], [`verify`] and [`verify_nothing`] compute on the calling
//! thread, unbounded, with fresh memory each time: for tools and benches that hash once
//! in a while, outside any server.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::error::Error;
use crate::metrics;
use crate::workers::{Shape, Workers};

/// OWASP's argon2id minimum: 19 MiB of memory, 2 passes, 1 lane.
pub const MEMORY_KIB: u32 = 19_456;
/// Passes over memory.
pub const ITERATIONS: u32 = 2;
/// Lanes.
pub const PARALLELISM: u32 = 1;

/// How many hashes may wait for a hashing thread beyond those running (contract section
/// 2); one more is refused.
pub const HASH_QUEUE: usize = 64;

/// The cause of the [`Error::Unavailable`] of a hash refused because [`HASH_QUEUE`]
/// hashes were already waiting.
pub const HASHING_BUSY: &str = "password hashing busy";

/// The hash of a random password that was thrown away when this constant was made: a
/// login for an unknown email verifies against it, so it spends the same work as one for
/// a known email (no account enumeration by timing). Same parameters as [`hash`].
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$PumYMZzOTifn2hYn3BQi9w$yrm0yVqMEbOOsPd1WWQ2+JAzt40rtTV66kSNrcQ+SOg";

fn params() -> Result<Params, Error> {
    Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))
}

/// Hashes `password` with a fresh 16-byte random salt into a PHC string, on the calling
/// thread.
pub fn hash(password: &str) -> Result<String, Error> {
    hash_on(&CallingThread, password)
}

/// True when `password` matches the PHC string `stored` (with the algorithm, version and
/// parameters it records; the comparison takes constant time), computed on the calling
/// thread. A damaged stored hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    verify_on(&CallingThread, password, stored).unwrap_or(false)
}

/// Spends one verification's work on the calling thread and answers nothing: used when
/// the email is unknown.
pub fn verify_nothing(password: &str) {
    let _ = verify(password, DUMMY_HASH);
}

/// The handle's password hashing: argon2 on its own bounded threads (see the module
/// documentation). Dropping it lets the running hashes finish.
pub struct PasswordHashing {
    workers: Workers<Vec<Block>>,
}

impl PasswordHashing {
    /// One hashing thread per core and [`HASH_QUEUE`] waiting places.
    pub fn for_this_machine() -> PasswordHashing {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasswordHashing::new(cores, HASH_QUEUE)
    }

    /// `threads` hashing threads (at least one; they start with the first hash) and
    /// `queue` waiting places.
    pub fn new(threads: usize, queue: usize) -> PasswordHashing {
        PasswordHashing {
            workers: Workers::new(Shape {
                name: "narutalk-argon2",
                threads,
                queue,
                release_after: Some(MEMORY_KEPT_IDLE),
                on_start: lower_priority,
                queued_gauge: Some(metrics::ARGON2_QUEUED),
                running_gauge: None,
            }),
        }
    }

    /// [`hash`] on a hashing thread; [`Error::Unavailable`] when the queue is full.
    pub fn hash(&self, password: &str) -> Result<String, Error> {
        hash_on(self, password)
    }

    /// [`verify`] on a hashing thread; [`Error::Unavailable`] when the queue is full.
    pub fn verify(&self, password: &str, stored: &str) -> Result<bool, Error> {
        verify_on(self, password, stored)
    }

    /// [`verify_nothing`] on a hashing thread; [`Error::Unavailable`] when the queue is
    /// full (as a verification would be).
    pub fn verify_nothing(&self, password: &str) -> Result<(), Error> {
        verify_on(self, password, DUMMY_HASH).map(|_| ())
    }
}

impl std::fmt::Debug for PasswordHashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (threads, queue) = self.workers.bounds();
        f.debug_struct("PasswordHashing")
            .field("threads", &threads)
            .field("queue", &queue)
            .finish()
    }
}

/// Where an argon2 computation runs: it is given `blocks` blocks of working memory, and
/// gives `None` if it panicked.
trait Hasher {
    fn run<T: Send + 'static>(
        &self,
        blocks: usize,
        f: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<Option<T>, Error>;
}

/// The calling thread, with fresh memory each time.
struct CallingThread;

impl Hasher for CallingThread {
    fn run<T: Send + 'static>(
        &self,
        blocks: usize,
        f: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<Option<T>, Error> {
        let mut memory = vec![Block::default(); blocks];
        Ok(catch_unwind(AssertUnwindSafe(|| f(&mut memory))).ok())
    }
}

impl Hasher for PasswordHashing {
    fn run<T: Send + 'static>(
        &self,
        blocks: usize,
        f: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<Option<T>, Error> {
        let asked = Instant::now();
        let submitted = self.workers.submit(move |memory: &mut Vec<Block>| {
            if memory.len() < blocks {
                // Grown until the thread idles: a stored hash with a larger `m` is rare.
                // The capacity asked for is at least 32 MiB: glibc's malloc serves such a
                // request straight from mmap and unmaps it when freed, so the memory goes
                // back to the system when the thread lets it go (a smaller block would be
                // kept in the allocator's arena, and would raise its threshold for mapping
                // large blocks). Only the `blocks` zeroed are ever touched, so only they
                // count in the process's resident memory.
                memory.reserve_exact(blocks.max(MAPPED_BLOCKS) - memory.len());
                memory.resize(blocks, Block::default());
            }
            f(&mut memory[..blocks])
        });
        let Ok(completion) = submitted else {
            metrics::count(metrics::ARGON2_REFUSED);
            return Err(Error::Unavailable(HASHING_BUSY.to_owned()));
        };
        // A lost job (it panicked) answers nothing; the thread goes on.
        let answer = completion.wait().ok();
        metrics::record_seconds(metrics::ARGON2_SECONDS, asked.elapsed());
        Ok(answer)
    }
}

fn hash_on(hasher: &impl Hasher, password: &str) -> Result<String, Error> {
    let params = params()?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::internal(format!("random salt: {e}")))?;
    let password = password.to_owned();
    let output = hasher
        .run(params.block_count(), move |memory| {
            let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
            argon2
                .hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
                .map(|()| output)
        })?
        .ok_or_else(|| Error::internal("argon2: the hashing thread failed"))?
        .map_err(|e| Error::internal(format!("argon2: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::internal(format!("salt: {e}")))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output).map_err(|e| Error::internal(format!("argon2: {e}")))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `stored`; a damaged stored hash never matches, and only a
/// refused hash is an error.
fn verify_on(hasher: &impl Hasher, password: &str, stored: &str) -> Result<bool, Error> {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Ok(false);
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Ok(false);
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        parsed
            .version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(&parsed),
    ) else {
        return Ok(false);
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return Ok(false);
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let (password, salt, length) = (password.to_owned(), salt.to_vec(), expected.len());
    let computed = hasher.run(params.block_count(), move |memory| {
        let mut output = [0u8; Output::MAX_LENGTH];
        let output = &mut output[..length];
        argon2
            .hash_password_into_with_memory(password.as_bytes(), &salt, output, memory)
            .ok()
            .and_then(|()| Output::new(output).ok())
    })?;
    Ok(computed
        .flatten()
        .is_some_and(|computed| computed == expected))
}

/// How long a hashing thread keeps its working memory without a hash to compute.
const MEMORY_KEPT_IDLE: Duration = Duration::from_secs(1);

/// The smallest capacity of a hashing thread's memory, in 1 KiB blocks: 32 MiB, glibc's
/// largest threshold for serving an allocation from its own mapping.
const MAPPED_BLOCKS: usize = 32 * 1024;

/// The nice value of the hashing threads on Linux, where each thread has its own.
#[cfg(target_os = "linux")]
const HASHING_NICE: i32 = 6;

/// Makes the calling thread yield the CPU to the rest of the process when both want it.
/// Raising a thread's nice value needs no privilege; if it fails, hashing runs at normal
/// priority, which is correct, only less polite.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASHING_NICE);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};

    use super::*;
    use crate::workers::tests::Latch;

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
    fn the_handles_hashing_interoperates_with_the_calling_threads() {
        let hashing = PasswordHashing::new(1, HASH_QUEUE);
        let pooled = hashing.hash("correct horse").unwrap();
        assert!(verify("correct horse", &pooled));
        let here = hash("correct horse").unwrap();
        assert!(hashing.verify("correct horse", &here).unwrap());
        assert!(!hashing.verify("correct horsE", &here).unwrap());
        assert!(!hashing.verify("x", "$argon2id$garbage").unwrap());
        hashing.verify_nothing("anything").unwrap();
    }

    #[test]
    fn no_more_hashes_run_at_once_than_there_are_threads() {
        let hashing = PasswordHashing::new(2, HASH_QUEUE);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        let (running, most) = (running.clone(), most.clone());
                        let length = hashing.run(8, move |memory| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            running.fetch_sub(1, Ordering::SeqCst);
                            memory.len()
                        });
                        assert_eq!(length.unwrap(), Some(8));
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2);
    }

    #[test]
    fn beyond_the_queue_a_hash_is_refused_as_unavailable() {
        let hashing = Arc::new(PasswordHashing::new(1, 2));
        let (started, running) = mpsc::channel();
        let latch = Latch::default();
        // One hash holds the thread, two wait: the queue is full.
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let (hashing, started, latch) = (hashing.clone(), started.clone(), latch.clone());
                std::thread::spawn(move || {
                    hashing.run(1, move |_| {
                        started.send(()).unwrap();
                        latch.wait();
                    })
                })
            })
            .collect();
        running.recv().unwrap();
        while hashing.workers.queued() < 2 {
            std::thread::yield_now();
        }
        assert!(matches!(
            hashing.hash("one too many"),
            Err(Error::Unavailable(cause)) if cause == HASHING_BUSY
        ));
        assert!(matches!(
            hashing.verify("one too many", DUMMY_HASH),
            Err(Error::Unavailable(_))
        ));
        latch.open();
        for thread in waiting {
            assert_eq!(thread.join().unwrap().unwrap(), Some(()));
        }
        assert!(hashing.verify_nothing("after the flood").is_ok());
    }

    #[test]
    fn a_panicking_hash_answers_none_and_its_thread_goes_on() {
        let hashing = PasswordHashing::new(1, 1);
        assert_eq!(
            hashing
                .run(1, |_| -> u8 { panic!("a bug in a hash") })
                .unwrap(),
            None
        );
        assert_eq!(hashing.run(1, |memory| memory.len()).unwrap(), Some(1));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_at_a_lower_priority_than_the_rest() {
        let hashing = PasswordHashing::new(1, 1);
        let nice = hashing.run(1, |_| {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
        });
        assert_eq!(nice.unwrap().map(|n| n.ok()), Some(Some(HASHING_NICE)));
        assert_eq!(
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok(),
            Some(0),
            "the caller's priority is untouched"
        );
    }

    #[test]
    fn a_damaged_stored_hash_never_matches() {
        assert!(!verify("x", ""));
        assert!(!verify("x", "$argon2id$garbage"));
    }
}
