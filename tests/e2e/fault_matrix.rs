//! The fault matrix: every store and target operation (`put_new`, `get`, `promote`, `destroy`,
//! `apply`, `test`, `invalidate`) × every kind of fault (permanent; transient for more calls
//! than the in-process retries absorb, then recovering; a crash right after the operation
//! succeeded) × both rotation strategies × both stores, for a rotation and for a registration,
//! against a real nats-server, a real PostgreSQL cluster (password authentication) and moto.
//!
//! A crash is the operation's future dropped right after the backend call returned (the
//! `Hang` crash mode of the fault injector): nothing after it runs, the claim stays held, the
//! message is not acked — what `kill -9` leaves. Then the same command is delivered again to a
//! context with another holder, as another replica would get it. (Real processes killed by the
//! same injector's `Abort` mode are in `faults.rs`.)
//!
//! After every case the invariant is checked against the real systems, never the inventory
//! alone: exactly one current version and nothing pending; the current value, read from the
//! store, logs in to PostgreSQL as its role; Secrets Manager labels that version `AWSCURRENT`
//! and nothing `AWSPENDING`; no claim left. Then the next rotation succeeds and is checked the
//! same way. A registration must end with the role as it was (its original password logs in,
//! nothing registered) or fully taken over (as above, and the original password no longer
//! logs in).

use crate::harness::{Env, logs_in};
use futures::StreamExt;
use keyloop_backends::{AwsSecretsManager, Faults, PostgresConfig, PostgresTarget, resilience};
use keyloop_core::event::RotateCommand;
use keyloop_core::{
    BackendSettings, CredentialId, Policy, RotationReason, RotationStrategy, Secret, Stage,
    StoreKind, TargetKind,
};
use keyloop_nats::topology::GIVE_UP_AFTER;
use keyloop_testkit::moto::TestMoto;
use keyloop_testkit::postgres::{TestPostgres, unique_name};
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{self, Cause, Registration};
use keyloop_workers::rotator;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Cases run at once: enough to keep two cores busy while PostgreSQL logins wait.
const PARALLEL: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Permanent,
    Transient,
    Crash,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Permanent, Fault::Transient, Fault::Crash];

    fn spec(self, op: &str) -> String {
        match self {
            // More than the in-process attempts, so the message itself is retried.
            Self::Transient => format!("flaky={op}:3"),
            Self::Permanent => format!("permanent={op}"),
            Self::Crash => format!("crash={op}"),
        }
    }
}

/// The servers every case of one matrix shares; each case has its own credential, role and
/// secret.
struct Bed {
    env: Env,
    pg: TestPostgres,
    moto: TestMoto,
    target: Arc<PostgresTarget>,
}

impl Bed {
    async fn start() -> Self {
        let (env, pg, moto) = tokio::join!(Env::start(), TestPostgres::start(), TestMoto::start());
        let admin = pg.create_admin().await;
        let target =
            Arc::new(PostgresTarget::new(&PostgresConfig::new(Secret::from(admin))).unwrap());
        Self {
            env,
            pg,
            moto,
            target,
        }
    }

    /// A worker context as a fresh process has it (its own claim holder), with `faults`.
    async fn context(&self, faults: Option<Arc<Faults>>) -> WorkerContext {
        let mut ctx = WorkerContext::open(self.env.bus.clone(), Some(&self.env.master_key()))
            .await
            .unwrap();
        ctx.backends.postgres = Some(self.target.clone());
        ctx.backends.aws_sm = Some(Arc::new(AwsSecretsManager::new(self.moto.config())));
        ctx.backends.faults = faults;
        ctx
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
struct Case {
    strategy: RotationStrategy,
    store: StoreKind,
    op: &'static str,
    fault: Fault,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<11} {:<6} {:<10} {:?}",
            self.strategy.name(),
            self.store.name(),
            self.op,
            self.fault
        )
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for strategy in [RotationStrategy::Single, RotationStrategy::Alternating] {
        for store in [StoreKind::Local, StoreKind::AwsSm] {
            for op in resilience::OPERATIONS {
                for fault in Fault::ALL {
                    out.push(Case {
                        strategy,
                        store,
                        op,
                        fault,
                    });
                }
            }
        }
    }
    out
}

/// What one case did, for the table the test prints.
struct Outcome {
    case: Case,
    injected: u64,
    result: String,
    failure: Option<String>,
    millis: u128,
}

/// A credential of this case: its id, the role it manages (created with an original password
/// that only the test knows) and its registration.
struct Subject {
    id: CredentialId,
    /// The role the first version logs in as (`<base>_a` for alternating).
    first_role: String,
    original: String,
    registration: Registration,
}

async fn subject(bed: &Bed, case: &Case, kind: &str) -> Subject {
    let base = unique_name("fm");
    let original = format!("orig-{}", uuid::Uuid::now_v7().simple());
    let su = bed.pg.superuser().await;
    let first_role = match case.strategy {
        RotationStrategy::Single => {
            su.batch_execute(&format!("CREATE ROLE {base} LOGIN PASSWORD '{original}'"))
                .await
                .unwrap();
            base.clone()
        }
        RotationStrategy::Alternating => {
            // The base role holds the application's privileges; `_a` exists already, as an
            // application's role keyloop takes over would.
            su.batch_execute(&format!(
                "CREATE ROLE {base} NOLOGIN; CREATE ROLE {base}_a LOGIN PASSWORD '{original}' IN ROLE {base}"
            ))
            .await
            .unwrap();
            format!("{base}_a")
        }
    };
    let id: CredentialId = format!("fm/{kind}/{}", base.replace('_', "-"))
        .parse()
        .unwrap();
    let registration = Registration {
        id: id.clone(),
        store: case.store,
        target: TargetKind::Postgres,
        policy: Policy {
            max_age_secs: None,
            grace_secs: 3600,
            idle_revoke_after_secs: None,
            owner: None,
            ..Default::default()
        },
        settings: BackendSettings {
            secret_id: (case.store == StoreKind::AwsSm).then(|| format!("keyloop-fm/{base}")),
            role: Some(base.clone()),
            strategy: Some(case.strategy),
            ..BackendSettings::default()
        },
    };
    Subject {
        id,
        first_role,
        original,
        registration,
    }
}

fn cause() -> Cause {
    Cause {
        source: "keyloop/test".into(),
        ..Default::default()
    }
}

/// Runs a rotation under `faults` as the runtime would deliver it: once (permanent), until it
/// succeeds or the deliveries run out (transient), or until the injected crash, then once more
/// in a fresh context (another replica). Returns the last attempt's result.
async fn rotate_under(
    bed: &Bed,
    cmd: &RotateCommand,
    fault: Fault,
    faults: Arc<Faults>,
) -> Result<(), String> {
    let ctx = bed.context(Some(faults.clone())).await;
    match fault {
        Fault::Permanent => rotator::execute(&ctx, cmd, &cause(), false)
            .await
            .map_err(|e| e.to_string()),
        Fault::Transient => {
            let mut last = Ok(());
            for delivery in 1..=GIVE_UP_AFTER {
                match rotator::execute(&ctx, cmd, &cause(), delivery == GIVE_UP_AFTER).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_transient() => last = Err(e.to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            last
        }
        Fault::Crash => {
            let cause = cause();
            let crashed = tokio::select! {
                r = rotator::execute(&ctx, cmd, &cause, false) => Some(r),
                () = faults.crashed() => None,
            };
            match crashed {
                Some(r) => r.map_err(|e| e.to_string()),
                None => {
                    let replica = bed.context(None).await;
                    rotator::execute(&replica, cmd, &cause, false)
                        .await
                        .map_err(|e| format!("after the crash: {e}"))
                }
            }
        }
    }
}

/// Registers under `faults`, as an operator would: once; after a transient failure or a crash,
/// the same command again.
async fn register_under(
    bed: &Bed,
    reg: &Registration,
    fault: Fault,
    faults: Arc<Faults>,
) -> Result<ops::Registered, String> {
    let ctx = bed.context(Some(faults.clone())).await;
    match fault {
        Fault::Permanent => ops::register(&ctx, reg.clone(), &cause())
            .await
            .map_err(|e| e.to_string()),
        Fault::Transient => match ops::register(&ctx, reg.clone(), &cause()).await {
            Ok(r) => Ok(r),
            Err(e) if e.is_transient() => ops::register(&ctx, reg.clone(), &cause())
                .await
                .map_err(|e| format!("run again: {e}")),
            Err(e) => Err(e.to_string()),
        },
        Fault::Crash => {
            let cause = cause();
            let crashed = tokio::select! {
                r = ops::register(&ctx, reg.clone(), &cause) => Some(r),
                () = faults.crashed() => None,
            };
            match crashed {
                Some(r) => r.map_err(|e| e.to_string()),
                None => {
                    let again = bed.context(None).await;
                    ops::register(&again, reg.clone(), &cause)
                        .await
                        .map_err(|e| format!("run again after the crash: {e}"))
                }
            }
        }
    }
}

/// The invariant after any failure: one current version, nothing pending, no claim left; the
/// current value logs in as its role (a real login); Secrets Manager agrees on what is current.
/// Returns the current value.
async fn check_working(bed: &Bed, id: &CredentialId, when: &str) -> Result<Secret, String> {
    let ctx = bed.context(None).await;
    let (cred, _) = ctx.inventory.require(id).await.map_err(|e| e.to_string())?;
    let stages: Vec<_> = cred.versions.iter().map(|v| v.stage.name()).collect();
    let current: Vec<_> = cred
        .versions
        .iter()
        .filter(|v| v.stage == Stage::Current)
        .collect();
    if current.len() != 1 {
        return Err(format!(
            "{when}: {} current versions ({stages:?})",
            current.len()
        ));
    }
    if cred.versions.iter().any(|v| v.stage == Stage::Pending) {
        return Err(format!("{when}: a pending version is left ({stages:?})"));
    }
    if let Some(claim) = &cred.claim {
        return Err(format!("{when}: claim of {} left", claim.op));
    }
    let current = current[0];
    let store = ctx.backends.store(cred.store).unwrap();
    let value = store
        .get(&cred, current.id)
        .await
        .map_err(|e| format!("{when}: read the current value: {e}"))?
        .ok_or_else(|| format!("{when}: the current value is gone from its store"))?;
    let role = current.login.clone().unwrap_or_default();
    if !logs_in(&bed.pg, &role, value.expose()).await {
        return Err(format!(
            "{when}: the current version {} does NOT log in as {role} ({stages:?})",
            current.id
        ));
    }
    if cred.store == StoreKind::AwsSm {
        let secret = cred.settings.secret_id.clone().unwrap();
        let described = bed
            .moto
            .client()
            .await
            .describe_secret()
            .secret_id(&secret)
            .send()
            .await
            .map_err(|e| format!("{when}: describe {secret}: {e}"))?;
        let labels = described
            .version_ids_to_stages()
            .cloned()
            .unwrap_or_default();
        let holding = |label: &str| {
            labels
                .iter()
                .filter(|(_, l)| l.iter().any(|x| x == label))
                .map(|(v, _)| v.clone())
                .collect::<Vec<_>>()
        };
        if holding("AWSCURRENT") != [current.id.to_string()] {
            return Err(format!(
                "{when}: AWSCURRENT is on {:?}, the current version is {}",
                holding("AWSCURRENT"),
                current.id
            ));
        }
        if !holding("AWSPENDING").is_empty() {
            return Err(format!(
                "{when}: AWSPENDING left on {:?}",
                holding("AWSPENDING")
            ));
        }
    }
    Ok(value)
}

/// A healthy rotation after the faulty step succeeds, and leaves the credential working.
async fn next_rotation_works(bed: &Bed, id: &CredentialId, before: &Secret) -> Result<(), String> {
    let ctx = bed.context(None).await;
    let cmd = RotateCommand {
        credential: id.clone(),
        reason: RotationReason::Manual,
        op_id: format!("fm/next/{}", uuid::Uuid::now_v7()),
    };
    rotator::execute(&ctx, &cmd, &cause(), false)
        .await
        .map_err(|e| format!("the next rotation failed: {e}"))?;
    let after = check_working(bed, id, "after the next rotation").await?;
    if after.expose() == before.expose() {
        return Err("the next rotation did not change the value".into());
    }
    Ok(())
}

async fn rotation_case(bed: &Bed, case: Case) -> Outcome {
    let started = Instant::now();
    let subject = subject(bed, &case, "rot").await;
    let healthy = bed.context(None).await;
    ops::register(&healthy, subject.registration.clone(), &cause())
        .await
        .unwrap_or_else(|e| panic!("{case}: healthy registration: {e}"));
    // A first rotation, so a previous version exists and every operation is on the path.
    let first = RotateCommand {
        credential: subject.id.clone(),
        reason: RotationReason::Manual,
        op_id: format!("fm/first/{}", subject.id),
    };
    rotator::execute(&healthy, &first, &cause(), false)
        .await
        .unwrap_or_else(|e| panic!("{case}: healthy first rotation: {e}"));
    let faults = Arc::new(
        Faults::parse(&case.fault.spec(case.op))
            .unwrap()
            .hang_on_crash(),
    );
    let cmd = RotateCommand {
        credential: subject.id.clone(),
        reason: RotationReason::Manual,
        op_id: format!("fm/faulty/{}", subject.id),
    };
    let result = rotate_under(bed, &cmd, case.fault, faults.clone()).await;
    let mut failure = None;
    match check_working(bed, &subject.id, "after the faulty rotation").await {
        Ok(value) => {
            if let Err(e) = next_rotation_works(bed, &subject.id, &value).await {
                failure = Some(e);
            }
        }
        Err(e) => failure = Some(e),
    }
    if case.fault == Fault::Transient && result.is_err() && failure.is_none() {
        failure = Some(format!(
            "a transient fault that recovers must end in a rotation: {result:?}"
        ));
    }
    Outcome {
        case,
        injected: faults.injected(),
        result: match &result {
            Ok(()) => "rotated".into(),
            Err(e) => format!("failed: {}", first_words(e)),
        },
        failure,
        millis: started.elapsed().as_millis(),
    }
}

async fn registration_case(bed: &Bed, case: Case) -> Outcome {
    let started = Instant::now();
    let subject = subject(bed, &case, "reg").await;
    let faults = Arc::new(
        Faults::parse(&case.fault.spec(case.op))
            .unwrap()
            .hang_on_crash(),
    );
    let result = register_under(bed, &subject.registration, case.fault, faults.clone()).await;
    let ctx = bed.context(None).await;
    let recorded = ctx.inventory.get(&subject.id).await.unwrap();
    let original_works = logs_in(&bed.pg, &subject.first_role, &subject.original).await;
    let mut failure = None;
    let state = match (&result, recorded) {
        (Err(_), None) => {
            // The role as it was: its own password still logs in, and a new registration of
            // the same role is not refused by what the failed one left.
            if !original_works {
                failure = Some("nothing registered, but the role's original password no longer logs in: locked out".into());
            } else if let Err(e) = ops::register(&ctx, subject.registration.clone(), &cause()).await
            {
                failure = Some(format!("registering again after the failure: {e}"));
            }
            "as it was"
        }
        (Err(e), Some(_)) => {
            failure = Some(format!("a failed registration left a record behind: {e}"));
            "left half"
        }
        (Ok(_), None) => {
            failure = Some("registered, but no record".into());
            "lost"
        }
        (Ok(r), Some(_)) => {
            if original_works {
                failure = Some("registered, but the role's original password still logs in".into());
            }
            if r.warnings.is_empty() {
                "taken over"
            } else {
                "taken over, with a warning"
            }
        }
    };
    if failure.is_none() {
        match check_working(bed, &subject.id, "after the registration").await {
            Ok(value) => {
                if let Err(e) = next_rotation_works(bed, &subject.id, &value).await {
                    failure = Some(e);
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    if matches!(case.fault, Fault::Transient | Fault::Crash)
        && state != "taken over"
        && state != "taken over, with a warning"
    {
        failure.get_or_insert(format!(
            "a registration run again after a transient fault or a crash must finish, not end {state}: {result:?}"
        ).chars().take(400).collect());
    }
    Outcome {
        case,
        injected: faults.injected(),
        result: match &result {
            Ok(_) => state.to_owned(),
            Err(e) => format!("{state}: {}", first_words(e)),
        },
        failure,
        millis: started.elapsed().as_millis(),
    }
}

fn first_words(text: &str) -> String {
    let t: String = text.chars().take(70).collect();
    if t.len() < text.len() {
        format!("{t}…")
    } else {
        t
    }
}

/// Prints the matrix as a table and fails with every broken cell.
fn report(title: &str, outcomes: &[Outcome], took: std::time::Duration) {
    println!(
        "{title}: {} cases in {:.1} s",
        outcomes.len(),
        took.as_secs_f64()
    );
    println!(
        "{:<11} {:<6} {:<10} {:<9} {:>8} {:>6}  result",
        "strategy", "store", "operation", "fault", "injected", "ms"
    );
    for o in outcomes {
        println!(
            "{}  {:>8} {:>6}  {}{}",
            o.case,
            o.injected,
            o.millis,
            o.result,
            o.failure
                .as_deref()
                .map(|f| format!("  <-- BROKEN: {f}"))
                .unwrap_or_default()
        );
    }
    let never: Vec<_> = outcomes
        .iter()
        .filter(|o| o.injected == 0)
        .map(|o| o.case.to_string())
        .collect();
    println!(
        "{} of {} cases injected their fault; the operation is not on the path of the others: {never:?}",
        outcomes.len() - never.len(),
        outcomes.len()
    );
    let broken: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {f}", o.case)))
        .collect();
    assert!(
        broken.is_empty(),
        "{} broken cells:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rotation_fault_leaves_a_role_without_a_working_current_value() {
    let bed = Arc::new(Bed::start().await);
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = futures::stream::iter(cases())
        .map(|case| {
            let bed = bed.clone();
            async move { rotation_case(&bed, case).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    outcomes.sort_by_key(|o| o.case.to_string());
    report("rotation fault matrix", &outcomes, started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_registration_fault_leaves_a_role_with_a_password_no_one_holds() {
    let bed = Arc::new(Bed::start().await);
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = futures::stream::iter(cases())
        .map(|case| {
            let bed = bed.clone();
            async move { registration_case(&bed, case).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    outcomes.sort_by_key(|o| o.case.to_string());
    report("registration fault matrix", &outcomes, started.elapsed());
}
