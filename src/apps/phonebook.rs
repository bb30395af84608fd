//! PHONEBOOK: personal contacts linked to companies, and customers.
//!
//! Contacts live in PERSONAL, companies in COMPANY: the PHONEBOOK namespace maps both, so a
//! contact is written with `INSERT ... SELECT ... FROM Company WHERE id = ?` — the company's
//! existence is checked in the same statement that writes the contact, across two files.

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

use super::company::{self, Company};
use super::{PageQuery, int, opt_text, parse_id, text, text_field};

fn namespace() -> NamespaceName {
    NamespaceName::new("PHONEBOOK").expect("valid name")
}

const CONTACT_LIST: &str = "SELECT c.id, c.name, c.phone, c.company_id, co.name, c.created_at
                            FROM Contact c LEFT JOIN Company co ON co.id = c.company_id
                            WHERE c.id > ?1 ORDER BY c.id LIMIT ?2";
const CONTACT_GET: &str = "SELECT c.id, c.name, c.phone, c.company_id, co.name, c.created_at
                           FROM Contact c LEFT JOIN Company co ON co.id = c.company_id WHERE c.id = ?1";
const CONTACT_INSERT: &str = "INSERT INTO Contact(name, phone, company_id, created_at)
                              SELECT ?1, ?2, id, ?4 FROM Company WHERE id = ?3
                              RETURNING id, name, phone, company_id, NULL, created_at";
const CONTACT_UPDATE: &str = "UPDATE Contact SET name = ?2, phone = ?3, company_id = ?4
                              WHERE id = ?1 AND EXISTS (SELECT 1 FROM Company WHERE id = ?4)
                              RETURNING id, name, phone, company_id, NULL, created_at";
const CONTACT_EXISTS: &str = "SELECT 1 FROM Contact WHERE id = ?1";
const CONTACT_DELETE: &str = "DELETE FROM Contact WHERE id = ?1";

const CUSTOMER_LIST: &str =
    "SELECT id, name, email, phone, created_at FROM Customer WHERE id > ?1 ORDER BY id LIMIT ?2";
const CUSTOMER_GET: &str = "SELECT id, name, email, phone, created_at FROM Customer WHERE id = ?1";
const CUSTOMER_INSERT: &str =
    "INSERT INTO Customer(name, email, phone, created_at) VALUES (?1, ?2, ?3, ?4)
                               RETURNING id, name, email, phone, created_at";
const CUSTOMER_UPDATE: &str = "UPDATE Customer SET name = ?2, email = ?3, phone = ?4 WHERE id = ?1
                               RETURNING id, name, email, phone, created_at";
const CUSTOMER_DELETE: &str = "DELETE FROM Customer WHERE id = ?1";

/// A personal contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    /// Row id.
    pub id: i64,
    /// Person's name.
    pub name: String,
    /// Phone number.
    pub phone: String,
    /// The company the contact works for.
    pub company_id: i64,
    /// That company's name (absent when the company was deleted, or on writes).
    pub company_name: Option<String>,
    /// When it was added (UTC).
    pub created_at: String,
}

impl Contact {
    fn from_row(row: &[SqlValue]) -> Contact {
        Contact {
            id: int(&row[0]),
            name: text(&row[1]),
            phone: text(&row[2]),
            company_id: int(&row[3]),
            company_name: opt_text(&row[4]),
            created_at: text(&row[5]),
        }
    }
}

/// What a person may set on a contact.
#[derive(Debug, Clone, Deserialize)]
pub struct ContactInput {
    /// Name (required).
    pub name: String,
    /// Phone number.
    #[serde(default)]
    pub phone: String,
    /// The company (required, must exist).
    pub company_id: i64,
}

impl ContactInput {
    fn checked(&self) -> Result<(String, String)> {
        Ok((
            text_field("Name", &self.name, 200, true)?,
            text_field("Phone", &self.phone, 40, false)?,
        ))
    }
}

/// A customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Customer {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Phone number.
    pub phone: String,
    /// When it was added (UTC).
    pub created_at: String,
}

impl Customer {
    fn from_row(row: &[SqlValue]) -> Customer {
        Customer {
            id: int(&row[0]),
            name: text(&row[1]),
            email: text(&row[2]),
            phone: text(&row[3]),
            created_at: text(&row[4]),
        }
    }
}

/// What a person may set on a customer.
#[derive(Debug, Clone, Deserialize)]
pub struct CustomerInput {
    /// Name (required).
    pub name: String,
    /// E-mail address.
    #[serde(default)]
    pub email: String,
    /// Phone number.
    #[serde(default)]
    pub phone: String,
}

impl CustomerInput {
    fn params(&self) -> Result<Vec<SqlValue>> {
        let name = text_field("Name", &self.name, 200, true)?;
        let email = text_field("E-mail", &self.email, 200, false)?;
        if !email.is_empty() && !email.contains('@') {
            return Err(Error::InvalidInput(format!(
                "E-mail {email:?} is not an e-mail address"
            )));
        }
        let phone = text_field("Phone", &self.phone, 40, false)?;
        Ok(vec![
            SqlValue::Text(name),
            SqlValue::Text(email),
            SqlValue::Text(phone),
        ])
    }
}

/// One page of contacts with their company names.
pub async fn contacts(instance: &Instance, page: PageQuery) -> Result<Vec<Contact>> {
    let result = instance
        .read(&namespace(), CONTACT_LIST, page.params()?)
        .await?;
    Ok(result.rows.iter().map(|r| Contact::from_row(r)).collect())
}

/// One contact.
pub async fn contact(instance: &Instance, id: i64) -> Result<Contact> {
    let result = instance
        .read(&namespace(), CONTACT_GET, vec![SqlValue::Integer(id)])
        .await?;
    result
        .rows
        .first()
        .map(|r| Contact::from_row(r))
        .ok_or_else(|| Error::NotFound(format!("contact {id} does not exist")))
}

/// Adds a contact for an existing company.
pub async fn add_contact(instance: &Instance, input: &ContactInput) -> Result<Contact> {
    let (name, phone) = input.checked()?;
    let params = vec![
        SqlValue::Text(name),
        SqlValue::Text(phone),
        SqlValue::Integer(input.company_id),
        SqlValue::Text(format_time(now_ms())),
    ];
    let result = instance.write(&namespace(), CONTACT_INSERT, params).await?;
    match result.rows.first() {
        Some(row) => Ok(Contact::from_row(row)),
        None => Err(Error::InvalidInput(format!(
            "company {} does not exist",
            input.company_id
        ))),
    }
}

/// Changes a contact.
pub async fn update_contact(instance: &Instance, id: i64, input: &ContactInput) -> Result<Contact> {
    let (name, phone) = input.checked()?;
    let params = vec![
        SqlValue::Integer(id),
        SqlValue::Text(name),
        SqlValue::Text(phone),
        SqlValue::Integer(input.company_id),
    ];
    let result = instance.write(&namespace(), CONTACT_UPDATE, params).await?;
    if let Some(row) = result.rows.first() {
        return Ok(Contact::from_row(row));
    }
    let exists = instance
        .read(&namespace(), CONTACT_EXISTS, vec![SqlValue::Integer(id)])
        .await?;
    if exists.rows.is_empty() {
        Err(Error::NotFound(format!("contact {id} does not exist")))
    } else {
        Err(Error::InvalidInput(format!(
            "company {} does not exist",
            input.company_id
        )))
    }
}

/// Deletes a contact.
pub async fn delete_contact(instance: &Instance, id: i64) -> Result<()> {
    let result = instance
        .write(&namespace(), CONTACT_DELETE, vec![SqlValue::Integer(id)])
        .await?;
    if result.rows_affected == 0 {
        return Err(Error::NotFound(format!(
            "contact {id} does not exist (already deleted?)"
        )));
    }
    Ok(())
}

/// One page of customers.
pub async fn customers(instance: &Instance, page: PageQuery) -> Result<Vec<Customer>> {
    let result = instance
        .read(&namespace(), CUSTOMER_LIST, page.params()?)
        .await?;
    Ok(result.rows.iter().map(|r| Customer::from_row(r)).collect())
}

/// One customer.
pub async fn customer(instance: &Instance, id: i64) -> Result<Customer> {
    let result = instance
        .read(&namespace(), CUSTOMER_GET, vec![SqlValue::Integer(id)])
        .await?;
    result
        .rows
        .first()
        .map(|r| Customer::from_row(r))
        .ok_or_else(|| Error::NotFound(format!("customer {id} does not exist")))
}

/// Adds a customer.
pub async fn add_customer(instance: &Instance, input: &CustomerInput) -> Result<Customer> {
    let mut params = input.params()?;
    params.push(SqlValue::Text(format_time(now_ms())));
    let result = instance
        .write(&namespace(), CUSTOMER_INSERT, params)
        .await?;
    Ok(Customer::from_row(&result.rows[0]))
}

/// Changes a customer.
pub async fn update_customer(
    instance: &Instance,
    id: i64,
    input: &CustomerInput,
) -> Result<Customer> {
    let mut params = vec![SqlValue::Integer(id)];
    params.extend(input.params()?);
    let result = instance
        .write(&namespace(), CUSTOMER_UPDATE, params)
        .await?;
    result
        .rows
        .first()
        .map(|r| Customer::from_row(r))
        .ok_or_else(|| Error::NotFound(format!("customer {id} does not exist")))
}

/// Deletes a customer.
pub async fn delete_customer(instance: &Instance, id: i64) -> Result<()> {
    let result = instance
        .write(&namespace(), CUSTOMER_DELETE, vec![SqlValue::Integer(id)])
        .await?;
    if result.rows_affected == 0 {
        return Err(Error::NotFound(format!(
            "customer {id} does not exist (already deleted?)"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pages

#[derive(Template, WebTemplate)]
#[template(path = "apps/phonebook.html")]
pub(crate) struct PhonebookPage {
    layout: Layout,
    contacts: Vec<Contact>,
    customers: Vec<Customer>,
    companies: Vec<Company>,
    errors: Vec<String>,
}

pub(crate) async fn page(State(state): State<AppState>, user: PortalUser) -> PhonebookPage {
    let mut errors = Vec::new();
    let page = PageQuery::default();
    let contacts = contacts(&state.instance, page).await.unwrap_or_else(|e| {
        errors.push(format!("Contacts: {e}"));
        Vec::new()
    });
    let customers = customers(&state.instance, page).await.unwrap_or_else(|e| {
        errors.push(format!("Customers: {e}"));
        Vec::new()
    });
    let companies = company::list(&state.instance, page)
        .await
        .unwrap_or_else(|e| {
            errors.push(format!("Companies: {e}"));
            Vec::new()
        });
    PhonebookPage {
        layout: Layout::new(
            &state,
            &user,
            "PHONEBOOK",
            vec!["Applications"],
            "phonebook",
        ),
        contacts,
        customers,
        companies,
        errors,
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContactForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    company_id: String,
}

impl ContactForm {
    fn input(self) -> Result<ContactInput> {
        let company_id = super::optional_number("Company", &self.company_id)?.ok_or_else(|| {
            Error::InvalidInput("choose the contact's company (add one in COMPANY first)".into())
        })?;
        Ok(ContactInput {
            name: self.name,
            phone: self.phone,
            company_id,
        })
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CustomerForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
}

impl CustomerForm {
    fn input(self) -> CustomerInput {
        CustomerInput {
            name: self.name,
            email: self.email,
            phone: self.phone,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Empty {}

pub(crate) async fn add_contact_form(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<ContactForm>,
) -> Response {
    let result = async {
        let contact = add_contact(&state.instance, &form.input()?).await?;
        Ok(format!("contact {} \"{}\" added", contact.id, contact.name))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/apps/phonebook")
}

#[derive(Template, WebTemplate)]
#[template(path = "apps/contact_edit.html")]
pub(crate) struct ContactEditPage {
    layout: Layout,
    contact: Contact,
    companies: Vec<Company>,
}

pub(crate) async fn edit_contact_page(
    State(state): State<AppState>,
    user: PortalUser,
    Path(id): Path<String>,
) -> Result<ContactEditPage, PageError> {
    let contact = contact(&state.instance, parse_id("contact", &id)?).await?;
    let companies = company::list(&state.instance, PageQuery::default()).await?;
    let layout = Layout::new(
        &state,
        &user,
        format!("Edit contact {}", contact.id),
        vec!["Applications", "PHONEBOOK"],
        "phonebook",
    );
    Ok(ContactEditPage {
        layout,
        contact,
        companies,
    })
}

pub(crate) async fn edit_contact_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(user, form): CsrfForm<ContactForm>,
) -> Response {
    let result = async {
        let contact =
            update_contact(&state.instance, parse_id("contact", &id)?, &form.input()?).await?;
        Ok(format!("contact {} \"{}\" saved", contact.id, contact.name))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/apps/phonebook")
}

pub(crate) async fn delete_contact_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = async {
        let id = parse_id("contact", &id)?;
        delete_contact(&state.instance, id).await?;
        Ok(format!("contact {id} deleted"))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/apps/phonebook")
}

pub(crate) async fn add_customer_form(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<CustomerForm>,
) -> Response {
    let result = add_customer(&state.instance, &form.input())
        .await
        .map(|c| format!("customer {} \"{}\" added", c.id, c.name));
    flash_and_redirect(&state, &user, result, "/apps/phonebook")
}

#[derive(Template, WebTemplate)]
#[template(path = "apps/customer_edit.html")]
pub(crate) struct CustomerEditPage {
    layout: Layout,
    customer: Customer,
}

pub(crate) async fn edit_customer_page(
    State(state): State<AppState>,
    user: PortalUser,
    Path(id): Path<String>,
) -> Result<CustomerEditPage, PageError> {
    let customer = customer(&state.instance, parse_id("customer", &id)?).await?;
    let layout = Layout::new(
        &state,
        &user,
        format!("Edit customer {}", customer.id),
        vec!["Applications", "PHONEBOOK"],
        "phonebook",
    );
    Ok(CustomerEditPage { layout, customer })
}

pub(crate) async fn edit_customer_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(user, form): CsrfForm<CustomerForm>,
) -> Response {
    let result = async {
        let customer =
            update_customer(&state.instance, parse_id("customer", &id)?, &form.input()).await?;
        Ok(format!(
            "customer {} \"{}\" saved",
            customer.id, customer.name
        ))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/apps/phonebook")
}

pub(crate) async fn delete_customer_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = async {
        let id = parse_id("customer", &id)?;
        delete_customer(&state.instance, id).await?;
        Ok(format!("customer {id} deleted"))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/apps/phonebook")
}

// ---------------------------------------------------------------------------------------------
// API

pub(crate) async fn api_contacts(
    State(state): State<AppState>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Vec<Contact>>, ApiError> {
    Ok(Json(contacts(&state.instance, page).await?))
}

pub(crate) async fn api_add_contact(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<ContactInput>,
) -> Result<Response, ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(add_contact(&state.instance, &input).await?),
    )
        .into_response())
}

pub(crate) async fn api_contact(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Contact>, ApiError> {
    Ok(Json(
        contact(&state.instance, parse_id("contact", &id)?).await?,
    ))
}

pub(crate) async fn api_update_contact(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ContactInput>,
) -> Result<Json<Contact>, ApiError> {
    Ok(Json(
        update_contact(&state.instance, parse_id("contact", &id)?, &input).await?,
    ))
}

pub(crate) async fn api_delete_contact(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id("contact", &id)?;
    delete_contact(&state.instance, id).await?;
    Ok(Json(serde_json::json!({ "deleted": id })))
}

pub(crate) async fn api_customers(
    State(state): State<AppState>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Vec<Customer>>, ApiError> {
    Ok(Json(customers(&state.instance, page).await?))
}

pub(crate) async fn api_add_customer(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CustomerInput>,
) -> Result<Response, ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(add_customer(&state.instance, &input).await?),
    )
        .into_response())
}

pub(crate) async fn api_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    Ok(Json(
        customer(&state.instance, parse_id("customer", &id)?).await?,
    ))
}

pub(crate) async fn api_update_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<CustomerInput>,
) -> Result<Json<Customer>, ApiError> {
    Ok(Json(
        update_customer(&state.instance, parse_id("customer", &id)?, &input).await?,
    ))
}

pub(crate) async fn api_delete_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id("customer", &id)?;
    delete_customer(&state.instance, id).await?;
    Ok(Json(serde_json::json!({ "deleted": id })))
}
