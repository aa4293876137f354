//! What the end-to-end tests (`lambda_watch.rs`, `ministack_stack.rs`) share:
//! the simulated app and the one scenario both run through real binaries.

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The simulated booking app with 30 classes, on the system clock (the
/// functions under test run in other processes, on real time).
pub async fn start_sim() -> (metered_sim::Sim, metered_sim::SimServer) {
    let clock: metered::SharedClock = std::sync::Arc::new(metered::SystemClock);
    let sim = metered_sim::Sim::new(
        metered_sim::SimConfig {
            classes: 30,
            ..Default::default()
        },
        clock,
    );
    let server = metered_sim::serve(sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (sim, server)
}

/// The scenario's config on top of the app's: classes transferred daily; a
/// workflow posts a note for five of them. The org may spend 3 calls a day:
/// the transfer and two notes, so three notes must wait for the next day.
pub fn notes_scenario(app_config: &str) -> String {
    format!(
        "{app_config}\n[[connections]]\norg = \"acme\"\nlimits = {{ per_day = 3, max_concurrent = 3 }}\n\
         [syncs.classes]\ncomplete_transfer = {{ every = \"24h\" }}\n\
         [workflows.notes]\ntrigger = {{ record_type = \"classes\" }}\n\
         conditions = [\"record.id in ['cls_000', 'cls_001', 'cls_002', 'cls_003', 'cls_004']\"]\n\
         [[workflows.notes.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/notes\"\nbody = {{ class = \"{{{{ record.id }}}}\" }}\n"
    )
}
