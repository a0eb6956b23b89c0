//! Users' clouds.yaml at rest, without a cloud: the sealed row in a real PostgreSQL and a key
//! rotation with the real `slices-blueprint rotate-clouds-key` command (README, "Secrets and
//! key rotation").

mod common;

use app::ssr::clouds::{load, CloudsKeys};
use app::ssr::secrets::SecretBox;
use base64::Engine as _;
use common::{Options, TestApp, ALICE};
use sqlx::PgPool;

const PASSWORD: &str = "rotate-me-7c1d";

fn yaml() -> String {
    format!(
        "clouds:\n  lab:\n    auth:\n      auth_url: https://keystone.lab.example:5000/v3\n      username: alice\n      password: {PASSWORD}\n      project_name: qkd\n"
    )
}

fn keys(current: &str, previous: Option<&str>) -> CloudsKeys {
    CloudsKeys {
        current: SecretBox::from_text(current).expect("key"),
        previous: previous.map(|p| SecretBox::from_text(p).expect("key")),
    }
}

async fn sealed(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT sealed_yaml FROM user_clouds WHERE user_id = $1")
        .bind(ALICE)
        .fetch_one(pool)
        .await
        .expect("row")
}

/// The API without Kubernetes or worker, and Alice's clouds.yaml ([`yaml`]) uploaded.
async fn app_with_alices_clouds(pool: &PgPool) -> TestApp {
    let app = TestApp::start(
        pool.clone(),
        Options {
            no_kubernetes: true,
            no_worker: true,
            ..Options::default()
        },
    )
    .await;
    let response = app
        .http
        .put(format!("{}/clouds-yaml", app.api))
        .bearer_auth(app.issuer.user(ALICE))
        .header("content-type", "application/yaml")
        .body(yaml())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    app
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn rotating_the_clouds_key_reseals_every_stored_file(pool: PgPool) {
    let app = app_with_alices_clouds(&pool).await;
    let before = sealed(&pool).await;
    assert!(!before.contains(PASSWORD) && !before.contains("auth_url"));

    let old = std::fs::read_to_string(&app.state.config.clouds_key_file).expect("key file");
    let old = old.trim().to_string();
    let new = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());

    // Without the previous key the stored file cannot be opened: the command says what to set.
    let failed = tokio::task::spawn_blocking({
        let (pool, new) = (pool.clone(), new.clone());
        move || {
            common::cli(
                &pool,
                &[("CLOUDS_ENCRYPTION_KEY", &new)],
                &["rotate-clouds-key"],
            )
        }
    })
    .await
    .expect("join");
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("CLOUDS_ENCRYPTION_KEY_PREVIOUS"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert_eq!(sealed(&pool).await, before, "nothing changed");

    let rotated = tokio::task::spawn_blocking({
        let (pool, new, old) = (pool.clone(), new.clone(), old.clone());
        move || {
            common::cli(
                &pool,
                &[
                    ("CLOUDS_ENCRYPTION_KEY", &new),
                    ("CLOUDS_ENCRYPTION_KEY_PREVIOUS", &old),
                ],
                &["rotate-clouds-key"],
            )
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(stdout.contains("re-sealed 1 clouds.yaml"), "{stdout}");

    // Sealed anew: the new key alone opens it, the old key alone no longer does.
    let after = sealed(&pool).await;
    assert_ne!(after, before);
    assert!(!after.contains(PASSWORD));
    let (file, default) = load(&pool, &keys(&new, None), ALICE)
        .await
        .expect("opens with the new key")
        .expect("stored");
    assert_eq!(
        (file.clouds[0].name.as_str(), default.as_str()),
        ("lab", "lab")
    );
    assert!(load(&pool, &keys(&old, None), ALICE).await.is_err());
}

/// A sealed clouds.yaml is bound to its owner: copied into another user's row (e.g. by a
/// database write), it does not open there.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_sealed_clouds_yaml_opens_only_for_its_owner(pool: PgPool) {
    let app = app_with_alices_clouds(&pool).await;
    let keys = &app.state.clouds_keys;
    assert!(load(&pool, keys, ALICE).await.expect("alice").is_some());
    sqlx::query(
        "INSERT INTO user_clouds (user_id, sealed_yaml, summary, default_cloud)
         SELECT 'user_test.portal_mallory', sealed_yaml, summary, default_cloud
         FROM user_clouds WHERE user_id = $1",
    )
    .bind(ALICE)
    .execute(&pool)
    .await
    .expect("copy the row");
    let stolen = load(&pool, keys, "user_test.portal_mallory").await;
    assert!(stolen.is_err(), "alice's file opened as mallory's");

    // Its key file lost: start-up says so instead of making a new key.
    let mut config = (*app.state.config).clone();
    config.clouds_key_file = config.clouds_key_file.with_file_name("gone.key");
    let refused = app::ssr::server::clouds_keys(&config, &pool)
        .await
        .expect_err("a missing key file with sealed data");
    assert!(refused.to_string().contains("is missing"), "{refused}");
    assert!(!config.clouds_key_file.exists(), "no new key was made");
}

/// A multi-VM request is checked against the requesting user's clouds.yaml (read once) before
/// anything is stored: an image on a cloud the file lacks is refused naming that resource's
/// `disk_image_id`; images on `default` pass.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn vm_requests_are_checked_against_the_users_clouds(pool: PgPool) {
    let app = app_with_alices_clouds(&pool).await;
    let user = app.issuer.user(ALICE);
    let admin = app.issuer.user(common::ADMIN);
    let mut images = Vec::new();
    for cloud in ["default", "elsewhere"] {
        let (s, image) = app
            .post(
                "/disk-images",
                &admin,
                serde_json::json!({"friendly_name": cloud, "location": "cirros", "cluster_id": cloud, "default_username": "cirros"}),
            )
            .await;
        assert_eq!(s, 201, "{image}");
        images.push(image["id"].as_str().expect("id").to_string());
    }
    let (s, flavor) = app
        .post(
            "/flavors",
            &admin,
            serde_json::json!({"friendly_name": "m1.tiny", "flavor_type": "vm", "vcpus": 1, "ram_mib": 512}),
        )
        .await;
    assert_eq!(s, 201, "{flavor}");
    let flavor = flavor["id"].as_str().expect("id");
    let token = app.issuer.experiment(&common::experiment_id(), ALICE);
    let body = |second_image: &str| {
        serde_json::json!({
            "expires_at": common::in_an_hour(),
            "tokens": [{"jwt": user}],
            "resources": [
                {"friendly_name": "vm-a", "disk_image_id": images[0], "flavor_id": flavor},
                {"friendly_name": "vm-b", "disk_image_id": second_image, "flavor_id": flavor},
            ]
        })
    };
    let (s, e) = app.post("/resources", &token, body(&images[1])).await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["field"], "resources[1].disk_image_id", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`elsewhere`"),
        "{e}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stored, 0, "nothing stored for a refused request");

    let (s, created) = app.post("/resources", &token, body(&images[0])).await;
    assert_eq!(s, 202, "{created}");
    assert_eq!(created["resources"].as_array().map(Vec::len), Some(2));
}
