//! COMPANY: list, add, edit and delete companies.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::instance::sql::SqlValue;
use crate::names::NamespaceName;
use crate::util::{format_time, now_ms};
use crate::web::api::ApiJson;
use crate::web::auth::{CsrfForm, PortalUser};
use crate::web::error::{ApiError, PageError};
use crate::web::{AppState, Layout, flash_and_redirect};

use super::{PageQuery, int, opt_int, optional_number, parse_id, text, text_field};

const LIST: &str = "SELECT id, name, mission, revenue, tax_id, created_at FROM Company WHERE id > ?1 ORDER BY id LIMIT ?2";
const COUNT: &str = "SELECT count(*) FROM Company";
const GET: &str =
    "SELECT id, name, mission, revenue, tax_id, created_at FROM Company WHERE id = ?1";
const INSERT: &str = "INSERT INTO Company(name, mission, revenue, tax_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                      RETURNING id, name, mission, revenue, tax_id, created_at";
const UPDATE: &str = "UPDATE Company SET name = ?2, mission = ?3, revenue = ?4, tax_id = ?5 WHERE id = ?1 \
                      RETURNING id, name, mission, revenue, tax_id, created_at";
const DELETE: &str = "DELETE FROM Company WHERE id = ?1";

fn namespace() -> NamespaceName {
    NamespaceName::new("COMPANY").expect("valid name")
}

/// A company record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Company {
    /// Row id.
    pub id: i64,
    /// Company name.
    pub name: String,
    /// Mission statement.
    pub mission: String,
    /// Yearly revenue, if known.
    pub revenue: Option<i64>,
    /// Tax id.
    pub tax_id: String,
    /// When it was added (UTC).
    pub created_at: String,
}

impl Company {
    fn from_row(row: &[SqlValue]) -> Company {
        Company {
            id: int(&row[0]),
            name: text(&row[1]),
            mission: text(&row[2]),
            revenue: opt_int(&row[3]),
            tax_id: text(&row[4]),
            created_at: text(&row[5]),
        }
    }
}

/// What a person may set on a company.
#[derive(Debug, Clone, Deserialize)]
pub struct CompanyInput {
    /// Company name (required).
    pub name: String,
    /// Mission statement.
    #[serde(default)]
    pub mission: String,
    /// Yearly revenue.
    #[serde(default)]
    pub revenue: Option<i64>,
    /// Tax id.
    #[serde(default)]
    pub tax_id: String,
}

impl CompanyInput {
    fn params(&self) -> Result<Vec<SqlValue>> {
        let name = text_field("Name", &self.name, 200, true)?;
        let mission = text_field("Mission", &self.mission, 2000, false)?;
        let tax_id = text_field("Tax ID", &self.tax_id, 40, false)?;
        if matches!(self.revenue, Some(r) if r < 0) {
            return Err(Error::InvalidInput("Revenue cannot be negative".into()));
        }
        Ok(vec![
            SqlValue::Text(name),
            SqlValue::Text(mission),
            self.revenue
                .map(SqlValue::Integer)
                .unwrap_or(SqlValue::Null),
            SqlValue::Text(tax_id),
        ])
    }
}

/// One page of companies, by id.
pub async fn list(instance: &Instance, page: PageQuery) -> Result<Vec<Company>> {
    let result = instance.read(&namespace(), LIST, page.params()?).await?;
    Ok(result.rows.iter().map(|r| Company::from_row(r)).collect())
}

/// How many companies there are.
pub async fn count(instance: &Instance) -> Result<i64> {
    let result = instance.read(&namespace(), COUNT, vec![]).await?;
    Ok(result.rows.first().map(|r| int(&r[0])).unwrap_or(0))
}

/// One company.
pub async fn get_one(instance: &Instance, id: i64) -> Result<Company> {
    let result = instance
        .read(&namespace(), GET, vec![SqlValue::Integer(id)])
        .await?;
    result
        .rows
        .first()
        .map(|r| Company::from_row(r))
        .ok_or_else(|| Error::NotFound(format!("company {id} does not exist")))
}

/// Adds a company; returns it with its id once durable.
pub async fn add(instance: &Instance, input: &CompanyInput) -> Result<Company> {
    let mut params = input.params()?;
    params.push(SqlValue::Text(format_time(now_ms())));
    let result = instance.write(&namespace(), INSERT, params).await?;
    Ok(Company::from_row(&result.rows[0]))
}

/// Changes a company.
pub async fn update(instance: &Instance, id: i64, input: &CompanyInput) -> Result<Company> {
    let mut params = vec![SqlValue::Integer(id)];
    params.extend(input.params()?);
    let result = instance.write(&namespace(), UPDATE, params).await?;
    result
        .rows
        .first()
        .map(|r| Company::from_row(r))
        .ok_or_else(|| Error::NotFound(format!("company {id} does not exist")))
}

/// Deletes a company.
pub async fn delete(instance: &Instance, id: i64) -> Result<()> {
    let result = instance
        .write(&namespace(), DELETE, vec![SqlValue::Integer(id)])
        .await?;
    if result.rows_affected == 0 {
        return Err(Error::NotFound(format!(
            "company {id} does not exist (already deleted?)"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pages

#[derive(Template, WebTemplate)]
#[template(path = "apps/company.html")]
pub(crate) struct ListPage {
    layout: Layout,
    companies: Vec<Company>,
    total: i64,
    next: Option<String>,
    error: Option<String>,
}

pub(crate) async fn list_page(
    State(state): State<AppState>,
    user: PortalUser,
    Query(page): Query<PageQuery>,
) -> ListPage {
    let listed = async {
        Ok::<_, Error>((
            list(&state.instance, page).await?,
            count(&state.instance).await?,
        ))
    }
    .await;
    let (companies, total, error) = match listed {
        Ok((companies, total)) => (companies, total, None),
        Err(err) => (Vec::new(), 0, Some(err.to_string())),
    };
    let next = page.next(companies.len(), companies.last().map(|c| c.id));
    let layout = Layout::new(&state, &user, "COMPANY", vec!["Applications"], "company");
    ListPage {
        layout,
        companies,
        total,
        next,
        error,
    }
}

/// The add/edit form as posted (all text).
#[derive(Debug, Deserialize)]
pub(crate) struct CompanyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    mission: String,
    #[serde(default)]
    revenue: String,
    #[serde(default)]
    tax_id: String,
}

impl CompanyForm {
    fn input(self) -> Result<CompanyInput> {
        Ok(CompanyInput {
            revenue: optional_number("Revenue", &self.revenue)?,
            name: self.name,
            mission: self.mission,
            tax_id: self.tax_id,
        })
    }
}

pub(crate) async fn add_form(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<CompanyForm>,
) -> Response {
    let result = match form.input() {
        Ok(input) => add(&state.instance, &input)
            .await
            .map(|c| format!("company {} \"{}\" added", c.id, c.name)),
        Err(err) => Err(err),
    };
    flash_and_redirect(&state, &user, result, "/apps/company")
}

#[derive(Template, WebTemplate)]
#[template(path = "apps/company_edit.html")]
pub(crate) struct EditPage {
    layout: Layout,
    company: Company,
}

pub(crate) async fn edit_page(
    State(state): State<AppState>,
    user: PortalUser,
    Path(id): Path<String>,
) -> Result<EditPage, PageError> {
    let company = get_one(&state.instance, parse_id("company", &id)?).await?;
    let layout = Layout::new(
        &state,
        &user,
        format!("Edit company {}", company.id),
        vec!["Applications", "COMPANY"],
        "company",
    );
    Ok(EditPage { layout, company })
}

pub(crate) async fn edit_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(user, form): CsrfForm<CompanyForm>,
) -> Response {
    let result = async {
        let id = parse_id("company", &id)?;
        let company = update(&state.instance, id, &form.input()?).await?;
        Ok(format!("company {} \"{}\" saved", company.id, company.name))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/apps/company")
}

#[derive(Deserialize)]
pub(crate) struct Empty {}

pub(crate) async fn delete_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = async {
        let id = parse_id("company", &id)?;
        delete(&state.instance, id).await?;
        Ok(format!("company {id} deleted"))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/apps/company")
}

// ---------------------------------------------------------------------------------------------
// API

pub(crate) async fn api_list(
    State(state): State<AppState>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Vec<Company>>, ApiError> {
    Ok(Json(list(&state.instance, page).await?))
}

pub(crate) async fn api_add(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CompanyInput>,
) -> Result<Response, ApiError> {
    let company = add(&state.instance, &input).await?;
    Ok((StatusCode::CREATED, Json(company)).into_response())
}

pub(crate) async fn api_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Company>, ApiError> {
    Ok(Json(
        get_one(&state.instance, parse_id("company", &id)?).await?,
    ))
}

pub(crate) async fn api_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<CompanyInput>,
) -> Result<Json<Company>, ApiError> {
    Ok(Json(
        update(&state.instance, parse_id("company", &id)?, &input).await?,
    ))
}

pub(crate) async fn api_delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id("company", &id)?;
    delete(&state.instance, id).await?;
    Ok(Json(serde_json::json!({ "deleted": id })))
}
