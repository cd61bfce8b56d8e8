//! `update-profile`: asks the profiles service to merge a profile into a user's (published
//! with a stable request id, so a re-executed step is deduplicated).

use prost::Message as _;
use rc_common::automation::steps::UpdateProfile;
use rc_common::subjects::{self, kinds};
use rc_proto::ProfileUpdateRequest;
use serde_json::json;

use super::StepDone;
use crate::engine::{Engine, Transient, ts};
use crate::refs;
use crate::store::{Run, now_ms};

pub(crate) async fn execute(
    engine: &Engine,
    run: &Run,
    index: usize,
    step: &UpdateProfile,
) -> Result<StepDone, Transient> {
    let req = match request(run, index, step, now_ms()) {
        Ok(req) => req,
        Err(reason) => return Ok(StepDone::Fail(reason)),
    };
    let ws = &run.workspace;
    engine
        .publish(
            subjects::courier_subject(ws, kinds::PROFILE_UPDATE),
            format!("{ws}:{}:profile.update", req.request_id),
            req.encode_to_vec(),
        )
        .await?;
    Ok(StepDone::Next(
        Some(format!("profile update requested for {}", req.user_id)),
        Some(json!({"requestId": req.request_id})),
    ))
}

/// The request, or why there is none (no recipient).
fn request(
    run: &Run,
    index: usize,
    step: &UpdateProfile,
    now: i64,
) -> Result<ProfileUpdateRequest, String> {
    let ctx = &run.context;
    let user = refs::opt_text(step.recipient_id.as_ref(), ctx).unwrap_or_else(|| run.recipient());
    if user.is_empty() {
        return Err(format!("steps[{index}].recipient_id: no recipient"));
    }
    let profile = refs::resolve(step.profile.as_value(), ctx);
    Ok(ProfileUpdateRequest {
        schema_version: 1,
        workspace_id: run.workspace.clone(),
        request_id: format!("{}-s{index}", run.id),
        user_id: user,
        profile: serde_json::to_vec(&profile).unwrap_or_default().into(),
        merge: step.merge.unwrap_or_default().as_str().into(),
        run_id: run.id.clone(),
        requested_at: Some(ts(now)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::{parse, run_with};
    use rc_common::automation::Action;
    use serde_json::Value;

    fn step(doc: Value) -> UpdateProfile {
        match parse(doc).action {
            Action::UpdateProfile(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolves_the_user_and_the_profile() {
        let run = run_with(json!({"recipient": "u_1", "data": {"plan": "pro", "owner": "u_9"}}));
        let s =
            step(json!({"action": "update-profile", "profile": {"plan": {"$ref": "data.plan"}}}));
        let req = request(&run, 2, &s, 0).unwrap();
        assert_eq!(req.user_id, "u_1");
        assert_eq!(req.request_id, format!("{}-s2", run.id));
        assert_eq!(req.merge, "replace");
        let profile: Value = serde_json::from_slice(&req.profile).unwrap();
        assert_eq!(profile, json!({"plan": "pro"}));
        let s = step(
            json!({"action": "update-profile", "recipient_id": "refs.data.owner",
            "profile": {}, "merge": "soft-merge"}),
        );
        let req = request(&run, 0, &s, 0).unwrap();
        assert_eq!(
            (req.user_id.as_str(), req.merge.as_str()),
            ("u_9", "soft-merge")
        );
    }

    #[test]
    fn no_recipient_fails_the_step() {
        let run = run_with(json!({"data": {}}));
        let s = step(
            json!({"action": "update-profile", "recipient_id": "refs.data.nobody", "profile": {}}),
        );
        assert_eq!(
            request(&run, 1, &s, 0).unwrap_err(),
            "steps[1].recipient_id: no recipient"
        );
    }
}
