//! TokenAdmin: create, get, list, grant, update, delete, and malformed requests.

use crate::helpers::*;

on_every_database!(
    admin_creates_gets_updates_and_deletes,
    admin_creates_gets_updates_and_deletes
);
async fn admin_creates_gets_updates_and_deletes(db: TestDb) {
    let api = Api::start(db).await;
    let before = unix_now();
    let (tok, key) = api
        .create(pb::CreateTokenRequest {
            name: "alice".into(),
            quota: 1_000,
            ..Default::default()
        })
        .await;
    assert!(tok.id > 0);
    assert!(key.starts_with("sk-") && key.len() == 51, "{key:?}");
    assert!(key[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(tok.display_prefix, format!("{}…", &key[..7]));
    assert_eq!(tok.name, "alice");
    assert_eq!((tok.remaining, tok.used, tok.unlimited), (1_000, 0, false));
    assert_eq!((tok.expires_at, tok.enabled), (0, true));
    assert!(tok.created_at >= before && tok.created_at <= unix_now());

    // By id and by key: the same token.
    assert_eq!(api.get(by_id(tok.id)).await.unwrap(), tok);
    assert_eq!(api.get(by_key(&key)).await.unwrap(), tok);

    // Disable: the holder is locked out; enable: back in.
    let disabled = api
        .update(pb::UpdateTokenRequest {
            token: by_key(&key),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!disabled.enabled);
    assert_eq!(code(api.subscription(&key).await), Code::Unauthenticated);
    let enabled = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(enabled.enabled);
    assert_eq!(api.subscription(&key).await.unwrap().hard_limit_usd, 0);

    // Name, expiry (0 removes it), unlimited; unset fields stay.
    let expires_at = unix_now() + 86_400;
    let changed = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            name: Some("bob".into()),
            expires_at: Some(expires_at),
            unlimited: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            changed.name.as_str(),
            changed.expires_at,
            changed.unlimited,
            changed.enabled
        ),
        ("bob", expires_at, true, true)
    );
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (sub.access_until, sub.hard_limit_usd),
        (expires_at, 100_000_000)
    );
    let cleared = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            expires_at: Some(0),
            unlimited: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (cleared.name.as_str(), cleared.expires_at, cleared.unlimited),
        ("bob", 0, false)
    );

    // Delete: gone for the admin and for the holder.
    api.admin()
        .delete_token(as_admin(pb::DeleteTokenRequest {
            token: by_key(&key),
        }))
        .await
        .unwrap();
    assert_eq!(code(api.get(by_id(tok.id)).await), Code::NotFound);
    assert_eq!(code(api.get(by_key(&key)).await), Code::NotFound);
    assert_eq!(code(api.subscription(&key).await), Code::Unauthenticated);
    let again = api
        .admin()
        .delete_token(as_admin(pb::DeleteTokenRequest {
            token: by_id(tok.id),
        }))
        .await;
    assert_eq!(code(again), Code::NotFound);
    let grant = api
        .grant(pb::GrantQuotaRequest {
            token: by_id(tok.id),
            quota: 1,
            ..Default::default()
        })
        .await;
    assert_eq!(code(grant), Code::NotFound);
    let update = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            name: Some("x".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(code(update), Code::NotFound);
}

on_every_database!(
    admin_lists_tokens_a_page_at_a_time,
    admin_lists_tokens_a_page_at_a_time
);
async fn admin_lists_tokens_a_page_at_a_time(db: TestDb) {
    let api = Api::start(db).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(api.create_units(1).await.0.id);
    }

    let mut listed = Vec::new();
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api.list(2, &page_token).await.unwrap();
        pages.push((page.tokens.len(), page.next_page_token.is_empty()));
        listed.extend(page.tokens.iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, [(2, false), (2, false), (1, true)]);
    assert_eq!(listed, created);

    // A last page that is full says it is the last: no call for an empty one.
    let first = api.list(4, "").await.unwrap();
    assert_eq!(first.tokens.len(), 4);
    let last = api.list(4, &first.next_page_token).await.unwrap();
    assert_eq!(last.tokens.len(), 1);
    assert!(last.next_page_token.is_empty());
    let whole = api.list(5, "").await.unwrap();
    assert_eq!(whole.tokens.len(), 5);
    assert!(whole.next_page_token.is_empty(), "{whole:?}");

    // The default page holds them all.
    let all = api.list(0, "").await.unwrap();
    assert_eq!(all.tokens.iter().map(|t| t.id).collect::<Vec<_>>(), created);
    assert!(all.next_page_token.is_empty());

    for bad in ["not-a-page", "-1", "0", "+2"] {
        assert_eq!(code(api.list(2, bad).await), Code::InvalidArgument, "{bad}");
    }
}

on_every_database!(
    admin_refuses_malformed_requests,
    admin_refuses_malformed_requests
);
async fn admin_refuses_malformed_requests(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, _) = api.create_units(1_000).await;

    let bad_refs = [
        None,
        Some(pb::TokenRef { r#ref: None }),
        by_key("sk-not-a-key"),
        by_key(""),
    ];
    for token in bad_refs {
        assert_eq!(
            code(api.get(token.clone()).await),
            Code::InvalidArgument,
            "{token:?}"
        );
        let grant = api
            .grant(pb::GrantQuotaRequest {
                token: token.clone(),
                quota: 1,
                ..Default::default()
            })
            .await;
        assert_eq!(code(grant), Code::InvalidArgument, "{token:?}");
        let update = api
            .update(pb::UpdateTokenRequest {
                token: token.clone(),
                enabled: Some(false),
                ..Default::default()
            })
            .await;
        assert_eq!(code(update), Code::InvalidArgument, "{token:?}");
        let delete = api
            .admin()
            .delete_token(as_admin(pb::DeleteTokenRequest {
                token: token.clone(),
            }))
            .await;
        assert_eq!(code(delete), Code::InvalidArgument, "{token:?}");
    }

    let creates = [
        ("both quota and quota_usd", 1_000, "5", 0),
        ("neither quota nor unlimited", 0, "", 0),
        ("negative quota", -1, "", 0),
        ("malformed dollars", 0, "five", 0),
        ("negative expiry", 1_000, "", -1),
    ];
    for (case, quota, quota_usd, expires_at) in creates {
        let created = api
            .admin()
            .create_token(as_admin(pb::CreateTokenRequest {
                quota,
                quota_usd: quota_usd.into(),
                expires_at,
                ..Default::default()
            }))
            .await;
        assert_eq!(code(created), Code::InvalidArgument, "{case}");
    }
    // Dollars too few for one unit are told apart from a missing quota.
    let refused = api
        .admin()
        .create_token(as_admin(pb::CreateTokenRequest {
            quota_usd: "0.000001".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains(r#""0.000001" comes to 0 units"#),
        "{refused:?}"
    );

    let grants = [
        ("both quota and quota_usd", 1_000, "5"),
        ("nothing", 0, ""),
        ("negative quota", -1, ""),
        ("zero dollars", 0, "0"),
    ];
    for (case, quota, quota_usd) in grants {
        let granted = api
            .grant(pb::GrantQuotaRequest {
                token: by_id(tok.id),
                quota,
                quota_usd: quota_usd.into(),
            })
            .await;
        assert_eq!(code(granted), Code::InvalidArgument, "{case}");
    }

    // A name longer than the store keeps, or with a NUL in it (PostgreSQL
    // cannot store one), is the caller's mistake, not a 500; a control
    // character would break `token list`'s table or reach a terminal.
    let controls = [
        "a\nb",
        "tab\there",
        "\u{1b}[31mred",
        "evil\u{202e}gnp.exe",
        "\u{2066}isolate",
        "del\u{7f}",
        "c1\u{9b}",
    ];
    let bad_names = ["n".repeat(256), "a\0b".to_owned()]
        .into_iter()
        .chain(controls.map(str::to_owned));
    for bad in bad_names {
        let created = api
            .admin()
            .create_token(as_admin(pb::CreateTokenRequest {
                name: bad.clone(),
                quota: 1,
                ..Default::default()
            }))
            .await;
        assert_eq!(code(created), Code::InvalidArgument, "{bad:?}");
        let renamed = api
            .admin()
            .update_token(as_admin(pb::UpdateTokenRequest {
                token: by_id(tok.id),
                name: Some(bad.clone()),
                ..Default::default()
            }))
            .await;
        assert_eq!(code(renamed), Code::InvalidArgument, "{bad:?}");
    }

    // Nothing of it changed anything.
    let after = api.get(by_id(tok.id)).await.unwrap();
    assert_eq!(after, tok);
    assert_eq!(api.list(0, "").await.unwrap().tokens.len(), 1);
}
