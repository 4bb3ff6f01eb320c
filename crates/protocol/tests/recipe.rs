//! The verification recipes in `docs/webhooks.md` work: the Rust one is compiled here (and must
//! stay word for word what the page shows), the Python one is run with `python3` where there is
//! one; both against the Standard Webhooks specification's example message.

const DOC: &str = include_str!("../../../docs/webhooks.md");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS: &str = "1614265330";
const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const BODY: &[u8] = br#"{"test": 2432232314}"#;

// recipe start
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};

fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| {
            STANDARD
                .decode(sig)
                .is_ok_and(|sig| mac.clone().verify_slice(&sig).is_ok())
        }) // and check that `timestamp` is within a few minutes of now
}
// recipe end

/// The code between two markers of this file, as the page must show it.
fn recipe() -> String {
    let me = include_str!("recipe.rs");
    let start = me.find("// recipe start\n").unwrap() + "// recipe start\n".len();
    let end = me.find("// recipe end").unwrap();
    me[start..end].to_string()
}

#[test]
fn the_rust_recipe_is_the_page_s_and_verifies_the_vector() {
    assert!(
        DOC.contains(&recipe()),
        "docs/webhooks.md no longer shows the recipe tested here:\n{}",
        recipe()
    );
    assert!(verify(SECRET, ID, TS, SIGNATURE, BODY));
    assert!(verify(
        SECRET,
        ID,
        TS,
        &format!("v1,bm9wZQ== {SIGNATURE}"),
        BODY
    ));
    assert!(!verify(
        SECRET,
        ID,
        TS,
        SIGNATURE,
        br#"{"test": 2432232315}"#
    ));
    assert!(!verify(SECRET, ID, "1614265331", SIGNATURE, BODY));
    assert!(!verify("whsec_%%%", ID, TS, SIGNATURE, BODY));
}

#[test]
fn the_python_recipe_verifies_the_vector() {
    let start = DOC.find("```python\n").expect("a Python recipe") + "```python\n".len();
    let code = &DOC[start..start + DOC[start..].find("```").unwrap()];
    let check = format!(
        "{code}\nh = {{'webhook-id': '{ID}', 'webhook-timestamp': '{TS}', 'webhook-signature': '{SIGNATURE}'}}\n\
         assert verify('{SECRET}', h, b'{{\"test\": 2432232314}}', tolerance=10**10)\n\
         assert not verify('{SECRET}', h, b'{{\"test\": 2432232315}}', tolerance=10**10)\n\
         assert not verify('{SECRET}', h, b'{{\"test\": 2432232314}}')  # too old\n\
         print('ok')\n"
    );
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(&check)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("python3 not available ({e}); the Python recipe is not checked");
            return;
        }
    };
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
