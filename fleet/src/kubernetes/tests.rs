//! Unit tests of the kubernetes provider's pure parts.

use super::*;

#[test]
fn the_config_table_parses_with_defaults_and_validates() {
    let c: KubernetesConfig = toml::from_str(
        r#"
        image = "ghcr.io/acme/shoal-agent:1"
        runtime_class_name = "gvisor"
        [resources]
        memory_limit_factor = 1.5
        [workspace]
        size = "5Gi"
        [quota]
        default_max_sandboxes = 3
        "#,
    )
    .unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.namespace_prefix, "shoal-t-");
    assert_eq!(c.workspace.as_ref().unwrap().mount_path, "/workspace");
    assert_eq!(c.state_timeout, Duration::from_secs(60));
    let again: KubernetesConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(again, c, "the resolved config prints back as it reads");
    assert!(toml::from_str::<KubernetesConfig>("image = \"i\"\ncolour = 1").is_err());
}

#[test]
fn validation_lists_every_problem() {
    let mut c = KubernetesConfig::new(" ");
    c.namespace_prefix = "Bad_".into();
    c.image_pull_policy = Some("Sometimes".into());
    c.resources.cpu_limit_factor = 0.5;
    c.runtime_class_name = Some("G Visor".into());
    c.workspace = Some(WorkspaceConfig {
        mount_path: "work".into(),
        ..Default::default()
    });
    c.run_as_user = Some(0);
    c.network.egress_cidrs = vec!["everywhere".into()];
    c.env.insert("SHOAL_URL".into(), "x".into());
    let problems = c.validate();
    for needle in [
        "namespace_prefix",
        "image must",
        "image_pull_policy",
        "cpu_limit_factor",
        "runtime_class_name",
        "mount_path",
        "run_as_user",
        "everywhere",
        "SHOAL_URL",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no problem about {needle} in {problems:?}"
        );
    }
}

#[test]
fn api_errors_map_to_provider_errors() {
    let api = |code: u16, message: &str| {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }))
    };
    assert!(matches!(
        to_provider_error(api(404, "")),
        ProviderError::NotFound(_)
    ));
    assert!(matches!(
        to_provider_error(api(409, "")),
        ProviderError::Conflict(_)
    ));
    assert!(matches!(
        to_provider_error(api(429, "")),
        ProviderError::RateLimited { .. }
    ));
    assert!(matches!(
        to_provider_error(api(403, "pods \"x\" is forbidden: exceeded quota: q")),
        ProviderError::Capacity(_)
    ));
    assert!(matches!(
        to_provider_error(api(403, "forbidden")),
        ProviderError::Permanent(_)
    ));
    assert!(matches!(
        to_provider_error(api(503, "")),
        ProviderError::Transient(_)
    ));
}
