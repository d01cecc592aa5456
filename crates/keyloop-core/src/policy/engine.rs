//! Loading a policy file (parsed, every policy `@id`-named, annotations checked, validated
//! against the schema in strict mode; every refusal points at the file's line and column) and
//! deciding requests with Cedar's authorizer.

use super::request::{PolicyRequest, Principal, Resource};
use super::{
    ADMINS_GROUP, Action, ApprovalNeed, DEFAULT_POLICY, Decision, Groups, MAX_APPROVERS, Outcome,
    SCHEMA,
};
use cedar_policy::{
    Authorizer, Context, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

/// What kind of mistake a policy file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadErrorKind {
    /// Not Cedar.
    Syntax,
    /// Cedar, but not about keyloop's entities, actions and attributes as the schema has them.
    Schema,
    /// An `@id`, `@outcome`, `@approvers` or `@group` missing, repeated or malformed; or a
    /// template.
    Annotation,
}

/// Why a policy file is refused: where (`origin:line:column`) and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct LoadError {
    /// What kind of mistake.
    pub kind: LoadErrorKind,
    /// The file (or `default policy`).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what to do.
    pub message: String,
}

/// The annotations of one policy that say what its permit asks for.
#[derive(Debug, Clone)]
struct Ceremony {
    outcome: Outcome,
}

/// The loaded policies, the schema they were validated against, and the groups.
#[derive(Debug)]
pub struct PolicyEngine {
    policies: PolicySet,
    ceremonies: HashMap<PolicyId, Ceremony>,
    schema: Schema,
    groups: Groups,
    authorizer: Authorizer,
    types: Types,
}

/// The entity type names, parsed once.
#[derive(Debug)]
struct Types {
    actor: EntityTypeName,
    group: EntityTypeName,
    credential: EntityTypeName,
    scope: EntityTypeName,
    inventory: EntityTypeName,
    action: EntityTypeName,
}

impl Types {
    fn new() -> Self {
        let ty = |name: &str| EntityTypeName::from_str(name).expect("a valid type name");
        Self {
            actor: ty("Keyloop::Actor"),
            group: ty("Keyloop::Group"),
            credential: ty("Keyloop::Credential"),
            scope: ty("Keyloop::Scope"),
            inventory: ty("Keyloop::Inventory"),
            action: ty("Keyloop::Action"),
        }
    }
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl PolicyEngine {
    /// The [`DEFAULT_POLICY`], with `groups`.
    pub fn default_policy(groups: Groups) -> Self {
        Self::load(DEFAULT_POLICY, "default policy", groups).expect("the default policy is valid")
    }

    /// The policies of `text` (read from `origin`, named in errors), with `groups`. Refused
    /// with every problem's line: a syntax error, a policy without `@id` or with one already
    /// used, a malformed annotation, a template, or a policy the schema does not admit.
    pub fn load(text: &str, origin: &str, groups: Groups) -> Result<Self, Vec<LoadError>> {
        let schema = Self::schema();
        let at = |kind, offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            LoadError {
                kind,
                origin: origin.to_owned(),
                line,
                column,
                message,
            }
        };
        let parsed = PolicySet::from_str(text).map_err(|errors| {
            errors
                .iter()
                .map(|e| at(LoadErrorKind::Syntax, first_offset(e), describe(e)))
                .collect::<Vec<_>>()
        })?;
        let mut errors = Vec::new();
        if let Some(t) = parsed.templates().next() {
            let offset = text.find(&t.to_cedar()).unwrap_or(0);
            errors.push(at(
                LoadErrorKind::Annotation,
                offset,
                "templates (policies with ?principal or ?resource) are not supported; name the principal or resource".into(),
            ));
        }
        let validation = Validator::new(schema.clone()).validate(&parsed, ValidationMode::Strict);
        for e in validation.validation_errors() {
            // Cedar names the policy by its position (`policy1`); the file names it by @id.
            let message = match parsed.annotation(e.policy_id(), "id") {
                Some(id) => {
                    describe(e).replace(&format!("`{}`", e.policy_id()), &format!("`{id}`"))
                }
                None => describe(e),
            };
            errors.push(at(LoadErrorKind::Schema, first_offset(e), message));
        }
        let mut named: BTreeMap<String, usize> = BTreeMap::new();
        let mut policies = PolicySet::new();
        let mut ceremonies = HashMap::new();
        let mut ordered: Vec<&Policy> = parsed.policies().collect();
        let offset_of = |p: &Policy| p.to_cedar().and_then(|s| text.find(&s)).unwrap_or(0);
        ordered.sort_by_key(|p| offset_of(p));
        for policy in ordered {
            let offset = offset_of(policy);
            let Some(id) = policy.annotation("id").filter(|id| !id.is_empty()) else {
                errors.push(at(
                    LoadErrorKind::Annotation,
                    offset,
                    "this policy has no @id(\"…\"); name every policy, the name is what decisions' events record".into(),
                ));
                continue;
            };
            if let Some(first) = named.insert(id.to_owned(), offset) {
                let (line, _) = line_column(text, first);
                errors.push(at(
                    LoadErrorKind::Annotation,
                    offset,
                    format!("@id(\"{id}\") is already the id of the policy at line {line}; ids must be unique"),
                ));
                continue;
            }
            match ceremony(policy) {
                Ok(c) => {
                    let pid = PolicyId::new(id);
                    ceremonies.insert(pid.clone(), c);
                    policies
                        .add(policy.new_id(pid))
                        .expect("ids are unique and the policy is static");
                }
                Err(message) => {
                    errors.push(at(
                        LoadErrorKind::Annotation,
                        offset,
                        format!("policy `{id}`: {message}"),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(errors);
        }
        Ok(Self {
            policies,
            ceremonies,
            schema,
            groups,
            authorizer: Authorizer::new(),
            types: Types::new(),
        })
    }

    /// The schema, parsed.
    fn schema() -> Schema {
        Schema::from_cedarschema_str(SCHEMA)
            .expect("the embedded schema is valid")
            .0
    }

    /// The groups the engine knows.
    pub const fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Whether `actor` is an admin.
    pub fn is_admin(&self, actor: &str) -> bool {
        self.groups.contains(ADMINS_GROUP, actor)
    }

    /// The ids of the loaded policies, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .policies
            .policies()
            .map(|p| p.id().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Decides `req`: the outcome and the policies that determined it (see the module docs).
    /// A request that does not fit the schema (which the mapping never builds) is a deny,
    /// with the reason in `errors`.
    pub fn decide(&self, req: &PolicyRequest<'_>) -> Decision {
        let request = match self.cedar_request(req) {
            Ok(r) => r,
            Err(e) => {
                return Decision {
                    outcome: Outcome::Deny,
                    policies: Vec::new(),
                    errors: vec![e],
                };
            }
        };
        let (request, entities) = request;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policies.sort();
        let errors = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let outcome = match response.decision() {
            cedar_policy::Decision::Deny => Outcome::Deny,
            cedar_policy::Decision::Allow if req.action == Action::Approve => Outcome::Allow,
            cedar_policy::Decision::Allow => self.strictest(response.diagnostics().reason()),
        };
        Decision {
            outcome,
            policies,
            errors,
        }
    }

    /// The strictest outcome the determining permits ask for.
    fn strictest<'a>(&self, reason: impl Iterator<Item = &'a PolicyId>) -> Outcome {
        let mut ids: Vec<&PolicyId> = reason.collect();
        ids.sort_by_key(|id| id.to_string());
        let mut best = Outcome::Allow;
        for id in ids {
            let Some(c) = self.ceremonies.get(id) else {
                continue;
            };
            let stricter = match (&c.outcome, &best) {
                (Outcome::Approve(a), Outcome::Approve(b)) => a.approvers > b.approvers,
                (a, b) => a.rank() > b.rank(),
            };
            if stricter {
                best = c.outcome.clone();
            }
        }
        best
    }

    /// The Cedar request and entities of `req`.
    fn cedar_request(
        &self,
        req: &PolicyRequest<'_>,
    ) -> Result<(cedar_policy::Request, Entities), String> {
        let t = &self.types;
        let principal = self.principal_entity(&req.principal)?;
        let (resource_uid, resource) = self.resource_entity(&req.resource)?;
        let c = &req.context;
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        let mut pairs = vec![
            (
                "now".to_owned(),
                RestrictedExpression::new_long(c.now.unix_timestamp()),
            ),
            ("source".to_owned(), string(c.source.name())),
        ];
        if let Some(task) = &c.task_id {
            pairs.push(("task_id".into(), string(task)));
        }
        if let Some(ttl) = c.ttl_secs {
            pairs.push(("ttl_secs".into(), long(ttl)));
        }
        if let Some(agent) = &c.agent_id {
            pairs.push(("agent_id".into(), string(agent)));
        }
        if let Some(action) = c.requested_action {
            pairs.push(("requested_action".into(), string(action.name())));
        }
        if let Some(requester) = &c.requester {
            pairs.push((
                "requester".into(),
                RestrictedExpression::new_entity_uid(uid(&t.actor, requester)),
            ));
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let request = cedar_policy::Request::new(
            principal.uid(),
            uid(&t.action, req.action.name()),
            resource_uid,
            context,
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        let entities = Entities::from_entities(
            std::iter::once(principal).chain(resource),
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        Ok((request, entities))
    }

    fn principal_entity(&self, p: &Principal) -> Result<Entity, String> {
        let t = &self.types;
        let mut attrs = HashMap::from([(
            "proved".to_owned(),
            RestrictedExpression::new_bool(p.proved),
        )]);
        if let Some(issuer) = &p.issuer {
            attrs.insert(
                "issuer".into(),
                RestrictedExpression::new_string(issuer.clone()),
            );
        }
        if let Some(subject) = &p.subject {
            attrs.insert(
                "subject".into(),
                RestrictedExpression::new_string(subject.clone()),
            );
        }
        // Only a proved name is in its groups: the unverified JIT requester never is.
        let parents: HashSet<EntityUid> = if p.proved {
            self.groups.of(&p.name).map(|g| uid(&t.group, g)).collect()
        } else {
            HashSet::new()
        };
        Entity::new(uid(&t.actor, &p.name), attrs, parents).map_err(|e| e.to_string())
    }

    fn resource_entity(&self, r: &Resource<'_>) -> Result<(EntityUid, Option<Entity>), String> {
        let t = &self.types;
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        match r {
            Resource::Inventory => Ok((uid(&t.inventory, "all"), None)),
            Resource::Scope { name, policy } => {
                let id = uid(&t.scope, name);
                let attrs = HashMap::from([
                    ("tier".to_owned(), string(policy.tier.name())),
                    (
                        "max_ttl_secs".to_owned(),
                        RestrictedExpression::new_long(
                            i64::try_from(policy.max_ttl_secs).unwrap_or(i64::MAX),
                        ),
                    ),
                    (
                        "postgres".to_owned(),
                        RestrictedExpression::new_bool(policy.postgres_group.is_some()),
                    ),
                ]);
                let entity =
                    Entity::new(id.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
                Ok((id, Some(entity)))
            }
            Resource::Credential(c) => {
                let id = uid(&t.credential, c.id.as_str());
                let actors = |names: &[String]| {
                    RestrictedExpression::new_set(
                        names
                            .iter()
                            .map(|n| RestrictedExpression::new_entity_uid(uid(&t.actor, n))),
                    )
                };
                let mut attrs = HashMap::from([
                    ("consumers".to_owned(), actors(c.consumers)),
                    ("blast_radius".to_owned(), string(c.blast_radius.name())),
                    (
                        "tags".to_owned(),
                        RestrictedExpression::new_set(c.tags.iter().map(|s| string(s))),
                    ),
                    ("store".to_owned(), string(c.store.name())),
                    ("target".to_owned(), string(c.target.name())),
                    (
                        "retired".to_owned(),
                        RestrictedExpression::new_bool(c.retired),
                    ),
                ]);
                if let Some(owner) = c.owner {
                    attrs.insert(
                        "owner".into(),
                        RestrictedExpression::new_entity_uid(uid(&t.actor, owner)),
                    );
                }
                let entity =
                    Entity::new(id.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
                Ok((id, Some(entity)))
            }
        }
    }
}

/// The first labelled offset of a diagnostic (0 when it has none).
fn first_offset(d: &dyn Diagnostic) -> usize {
    d.labels()
        .and_then(|mut labels| labels.next())
        .map_or(0, |l| l.offset())
}

/// A diagnostic's message and, when it has one, its help.
fn describe(d: &dyn Diagnostic) -> String {
    match d.help() {
        Some(help) => format!("{d}; {help}"),
        None => d.to_string(),
    }
}

/// What a policy's annotations ask for.
fn ceremony(policy: &Policy) -> Result<Ceremony, String> {
    let outcome = policy.annotation("outcome");
    let approvers = policy.annotation("approvers");
    let group = policy.annotation("group");
    if policy.effect() == Effect::Forbid {
        if outcome.is_some() || approvers.is_some() || group.is_some() {
            return Err(
                "a forbid is a deny: @outcome, @approvers and @group belong on permits".into(),
            );
        }
        return Ok(Ceremony {
            outcome: Outcome::Deny,
        });
    }
    let outcome = match outcome.unwrap_or("allow") {
        "allow" => Outcome::Allow,
        "notify" => Outcome::Notify,
        "approve" => {
            let approvers = match approvers {
                None => 1,
                Some(n) => n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_APPROVERS).contains(n))
                    .ok_or_else(|| {
                        format!("@approvers(\"{n}\") is not a number from 1 to {MAX_APPROVERS}")
                    })?,
            };
            let group = match group {
                Some("") => return Err("@group(\"\") names no group".into()),
                g => g.map(str::to_owned),
            };
            Outcome::Approve(ApprovalNeed { approvers, group })
        }
        other => {
            return Err(format!(
                "@outcome(\"{other}\") is not one of allow, notify, approve"
            ));
        }
    };
    if !matches!(outcome, Outcome::Approve(_)) && (approvers.is_some() || group.is_some()) {
        return Err("@approvers and @group go with @outcome(\"approve\")".into());
    }
    Ok(Ceremony { outcome })
}
