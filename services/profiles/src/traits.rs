//! identify traits → Courier profile fields.
//!
//! Every trait is kept verbatim. Well-known RudderStack/Segment traits are *also* written under
//! Courier's standard (OIDC) field name, unless the traits carry that standard field themselves
//! (then it wins). A `null` trait removes the key, and a mapped `null` removes the mapped key
//! too. The mapping only reads the event's own traits, never the stored profile, so the result
//! does not depend on delivery order.

use serde_json::{Map, Value};

/// `(standard field, trait names in priority order)`.
pub const MAPPING: &[(&str, &[&str])] = &[
    ("phone_number", &["phone", "phoneNumber"]),
    ("given_name", &["firstName", "first_name", "firstname"]),
    ("family_name", &["lastName", "last_name", "lastname"]),
    ("middle_name", &["middleName"]),
    ("nickname", &["username", "userName"]),
    ("birthdate", &["birthday"]),
    ("picture", &["avatar"]),
    ("zoneinfo", &["timezone", "timeZone"]),
    ("website", &["websiteUrl"]),
];

/// RudderStack address keys → OIDC address keys.
const ADDRESS: &[(&str, &str)] = &[
    ("street", "street_address"),
    ("city", "locality"),
    ("state", "region"),
    ("postalCode", "postal_code"),
    ("postal_code", "postal_code"),
    ("country", "country"),
];

/// Profile fields from traits (None = remove).
pub fn profile_fields(traits: &Map<String, Value>) -> Map<String, Value> {
    let mut out = traits.clone();
    for (standard, names) in MAPPING {
        if traits.contains_key(*standard) {
            continue;
        }
        if let Some(v) = names.iter().find_map(|n| traits.get(*n)) {
            out.insert((*standard).to_string(), v.clone());
        }
    }
    // name from first + last when no name was given.
    if !traits.contains_key("name")
        && let (Some(Value::String(first)), Some(Value::String(last))) =
            (out.get("given_name"), out.get("family_name"))
    {
        let name = format!("{first} {last}").trim().to_string();
        if !name.is_empty() {
            out.insert("name".into(), Value::String(name));
        }
    }
    // address: add the OIDC keys next to RudderStack's.
    if let Some(Value::Object(address)) = traits.get("address") {
        let mut mapped = address.clone();
        for (from, to) in ADDRESS {
            if !address.contains_key(*to)
                && let Some(v) = address.get(*from)
            {
                mapped.insert((*to).to_string(), v.clone());
            }
        }
        out.insert("address".into(), Value::Object(mapped));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_well_known_traits_and_keeps_everything() {
        let traits = json!({"email":"a@x.org","phone":"+331","firstName":"Ada","lastName":"Byron",
            "plan":"team","address":{"city":"Paris","postalCode":"75001"},"locale":"fr"});
        let out = profile_fields(traits.as_object().unwrap());
        assert_eq!(out["phone_number"], "+331");
        assert_eq!(out["phone"], "+331");
        assert_eq!(out["given_name"], "Ada");
        assert_eq!(out["family_name"], "Byron");
        assert_eq!(out["name"], "Ada Byron");
        assert_eq!(out["plan"], "team");
        assert_eq!(out["locale"], "fr");
        assert_eq!(out["address"]["locality"], "Paris");
        assert_eq!(out["address"]["postal_code"], "75001");
        assert_eq!(out["address"]["city"], "Paris");
    }

    #[test]
    fn explicit_standard_field_wins_and_null_propagates() {
        let traits = json!({"phone":"+1","phone_number":"+2","firstName":null,"name":"X"});
        let out = profile_fields(traits.as_object().unwrap());
        assert_eq!(out["phone_number"], "+2");
        assert_eq!(out["given_name"], Value::Null);
        assert_eq!(out["name"], "X");
    }
}
