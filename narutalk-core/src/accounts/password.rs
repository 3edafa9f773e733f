//! Password hashing: argon2id at OWASP's parameters, stored as PHC strings.
//!
//! Argon2 is CPU- and memory-hard on purpose: each hash or verification takes about 15 ms
//! of a core and fills 19 MiB. So it runs on the core's own hashing threads, one per core,
//! and the calling thread waits for the result:
//!
//! - More hashes at once than cores would only share the same CPU more slowly while
//!   holding more memory, so the bound costs no throughput, and a flood of logins cannot
//!   grow the process by 19 MiB per waiting request.
//! - Each thread keeps its working memory for the next hash instead of allocating and
//!   zeroing 19 MiB per call, and lets it go after a second without work, so an idle
//!   server does not hold 19 MiB per core.
//! - On Linux the threads run at a lower CPU priority (nice 5): when a login flood and the
//!   rest of the API both want the cores, the rest of the API gets most of them and keeps
//!   its latency.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::error::Error;
use crate::metrics;

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
        .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))
}

/// Hashes `password` with a fresh 16-byte random salt into a PHC string.
pub fn hash(password: &str) -> Result<String, Error> {
    let params = params()?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::internal(format!("random salt: {e}")))?;
    let password = password.to_owned();
    let output = HASHERS
        .run(params.block_count(), move |memory| {
            let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
            argon2
                .hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
                .map(|()| output)
        })
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
    let (password, salt, length) = (password.to_owned(), salt.to_vec(), expected.len());
    let computed = HASHERS.run(params.block_count(), move |memory| {
        let mut output = [0u8; Output::MAX_LENGTH];
        let output = &mut output[..length];
        argon2
            .hash_password_into_with_memory(password.as_bytes(), &salt, output, memory)
            .ok()
            .and_then(|()| Output::new(output).ok())
    });
    computed
        .flatten()
        .is_some_and(|computed| computed == expected)
}

/// Spends one verification's work and answers nothing: used when the email is unknown.
pub fn verify_nothing(password: &str) {
    let _ = verify(password, DUMMY_HASH);
}

/// The hashing threads: one per core.
static HASHERS: LazyLock<Arc<Hashers>> =
    LazyLock::new(|| Hashers::start(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// How long a hashing thread keeps its working memory without a hash to compute.
const MEMORY_KEPT_IDLE: Duration = Duration::from_secs(1);

/// The smallest capacity of a hashing thread's memory, in 1 KiB blocks: 32 MiB, glibc's
/// largest threshold for serving an allocation from its own mapping.
const MAPPED_BLOCKS: usize = 32 * 1024;

/// A hash to compute, given the thread's working memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Threads that run argon2, each with its own working memory, fed from one queue.
struct Hashers {
    queue: Mutex<VecDeque<Job>>,
    posted: Condvar,
    /// Threads that started; with none, a hash runs on the calling thread.
    threads: AtomicUsize,
}

impl Hashers {
    /// Starts `threads` hashing threads (at least one).
    fn start(threads: usize) -> Arc<Hashers> {
        let hashers = Arc::new(Hashers {
            queue: Mutex::new(VecDeque::new()),
            posted: Condvar::new(),
            threads: AtomicUsize::new(0),
        });
        for n in 0..threads.max(1) {
            let worker = hashers.clone();
            let started = std::thread::Builder::new()
                .name(format!("narutalk-argon2-{n}"))
                .spawn(move || worker.work());
            if started.is_ok() {
                hashers.threads.fetch_add(1, Ordering::SeqCst);
            }
        }
        hashers
    }

    /// Runs `f` on `blocks` blocks of a hashing thread's memory and waits for its result;
    /// `None` if `f` panicked.
    fn run<T: Send + 'static>(
        &self,
        blocks: usize,
        f: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |memory: &mut Vec<Block>| {
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
            let _ = answer.send(f(&mut memory[..blocks]));
        });
        let asked = Instant::now();
        if self.threads.load(Ordering::SeqCst) == 0 {
            let _ = catch_unwind(AssertUnwindSafe(|| job(&mut Vec::new())));
        } else {
            self.lock().push_back(job);
            metrics::gauge_add(metrics::ARGON2_QUEUED, 1.0);
            self.posted.notify_one();
        }
        let answer = result.recv().ok();
        metrics::record_seconds(metrics::ARGON2_SECONDS, asked.elapsed());
        answer
    }

    /// A hashing thread's life: lower its priority, then run jobs as they come.
    fn work(&self) {
        lower_priority();
        let mut memory = Vec::new();
        loop {
            let job = {
                let mut queue = self.lock();
                loop {
                    if let Some(job) = queue.pop_front() {
                        metrics::gauge_add(metrics::ARGON2_QUEUED, -1.0);
                        break job;
                    }
                    if memory.is_empty() {
                        // Nothing to give back: sleep until a hash comes.
                        queue = self
                            .posted
                            .wait(queue)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        continue;
                    }
                    let (next, waited) = self
                        .posted
                        .wait_timeout(queue, MEMORY_KEPT_IDLE)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    queue = next;
                    if waited.timed_out() && queue.is_empty() {
                        // Idle: the 19 MiB go back to the allocator until the next hash.
                        memory = Vec::new();
                    }
                }
            };
            // A panicking job answers nothing (its caller sees `None`); the thread goes on.
            let _ = catch_unwind(AssertUnwindSafe(|| job(&mut memory)));
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The nice value of the hashing threads on Linux, where each thread has its own.
#[cfg(target_os = "linux")]
const HASHING_NICE: i32 = 5;

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
    fn no_more_hashes_run_at_once_than_there_are_threads() {
        let hashers = Hashers::start(2);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        let (running, most) = (running.clone(), most.clone());
                        let length = hashers.run(8, move |memory| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            running.fetch_sub(1, Ordering::SeqCst);
                            memory.len()
                        });
                        assert_eq!(length, Some(8));
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2);
    }

    #[test]
    fn a_panicking_hash_answers_none_and_its_thread_goes_on() {
        let hashers = Hashers::start(1);
        assert_eq!(
            hashers.run(1, |_| -> u8 { panic!("a bug in a hash") }),
            None
        );
        assert_eq!(hashers.run(1, |memory| memory.len()), Some(1));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_at_a_lower_priority_than_the_rest() {
        let nice = HASHERS.run(1, |_| {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
        });
        assert_eq!(nice.map(|n| n.ok()), Some(Some(HASHING_NICE)));
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
