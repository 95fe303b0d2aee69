package fhir

import "sort"

// Who sees what. A patient-scoped caller sees the resources in its patient's compartment and the shared resources
// that belong to no patient; nothing else, by any path.
//
// The compartment is the R4 Patient CompartmentDefinition with Carta's changes:
//   - Patient: only the patient itself (R4 also puts Patients that "link" to it there, which would show one
//     patient another's demographics).
//   - Group: excluded (a Group lists other patients).
//   - Task: also where requester is the patient.
//   - Binary: those referenced from the patient's DocumentReferences (content.attachment.url) or whose
//     securityContext is the patient.
//   - Provenance and AuditEvent: also those about (target / entity.what) a resource in the compartment.

// compartmentChanges adjusts the R4 definition.
var (
	compartmentExtra   = map[string][]string{"Task": {"requester"}}
	compartmentExclude = map[string]bool{"Group": true}
)

// IndirectCompartment lists the reference parameters whose targets' compartments a resource joins: a Provenance
// about an Observation is in that Observation's patient's compartment.
var IndirectCompartment = map[string]string{"Provenance": "target", "AuditEvent": "entity"}

// sharedTypes belong to no patient and are readable with a matching patient/ scope: people and places of care,
// medications and definitions.
var sharedTypes = map[string]bool{
	"Practitioner": true, "PractitionerRole": true, "Organization": true, "OrganizationAffiliation": true,
	"Location": true, "HealthcareService": true, "Endpoint": true, "Medication": true, "MedicationKnowledge": true,
	"Substance": true, "DeviceDefinition": true, "CapabilityStatement": true, "StructureDefinition": true,
	"ValueSet": true, "CodeSystem": true, "ConceptMap": true, "NamingSystem": true, "SearchParameter": true,
	"OperationDefinition": true, "CompartmentDefinition": true, "ImplementationGuide": true, "Questionnaire": true,
	"ActivityDefinition": true, "PlanDefinition": true, "Library": true, "Measure": true, "ObservationDefinition": true,
	"SpecimenDefinition": true, "ChargeItemDefinition": true, "EventDefinition": true, "GraphDefinition": true,
	"MessageDefinition": true, "StructureMap": true, "TerminologyCapabilities": true,
}

// CompartmentParams returns the parameters that put a resource of typ in a patient's compartment (references to
// the Patient). It is nil for types outside the compartment.
func CompartmentParams(typ string) []string {
	if compartmentExclude[typ] || typ == "Patient" {
		return nil
	}
	ps := append(append([]string(nil), R4().Compartment[typ]...), compartmentExtra[typ]...)
	sort.Strings(ps)
	return ps
}

// InCompartment reports whether resources of typ can belong to a patient's compartment.
func InCompartment(typ string) bool {
	return typ == "Patient" || typ == "Binary" || len(CompartmentParams(typ)) > 0
}

// Shared reports whether typ belongs to no patient and may be read by any caller whose scopes allow the type.
func Shared(typ string) bool { return sharedTypes[typ] }

// Grant is what a caller may do with one resource type: nothing, everything, or only what matches one of the
// filters (SMART v2 scopes such as patient/Observation.rs?category=laboratory).
type Grant struct {
	Allowed bool
	// Filters, when non-empty, restrict access to resources matching at least one filter (each a list of
	// clauses that must all match).
	Filters [][]Clause
}

// Access is the data a caller may reach, handed to the store so that the limits are part of every query rather
// than checked afterwards.
type Access struct {
	// Patient, when set, limits every read to that patient's compartment plus shared types.
	Patient string
	// Read decides which types may be read (read, vread, history, _include); nil allows every type.
	Read func(typ string) Grant
	// Search decides which types may be searched; nil allows every type.
	Search func(typ string) Grant
}

// ReadGrant returns the read grant for typ.
func (a *Access) ReadGrant(typ string) Grant {
	if a == nil || a.Read == nil {
		return Grant{Allowed: true}
	}
	return a.Read(typ)
}

// SearchGrant returns the search grant for typ.
func (a *Access) SearchGrant(typ string) Grant {
	if a == nil || a.Search == nil {
		return Grant{Allowed: true}
	}
	return a.Search(typ)
}

// PatientOnly returns the compartment patient, or "".
func (a *Access) PatientOnly() string {
	if a == nil {
		return ""
	}
	return a.Patient
}

// Visible reports whether a patient-limited caller can ever see resources of typ.
func (a *Access) Visible(typ string) bool {
	if a.PatientOnly() == "" {
		return true
	}
	return Shared(typ) || InCompartment(typ)
}

// Restricted security labels: a resource carrying one is never shown to a patient-confined token, by any path
// (psychotherapy notes, 45 CFR 164.524(a)(1)(i); information compiled for a legal proceeding, (a)(1)(ii)).
var RestrictedLabels = [][2]string{
	{"http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSYTHPN"},
	{CanonicalBase + "/CodeSystem/security-label", "litigation-compilation"},
}

// RestrictedPrefix marks, in the compartment the store records, the patient of a restricted resource: the
// resource belongs to "restricted:<id>" instead of "<id>", so that no patient-confined access ever matches it.
const RestrictedPrefix = "restricted:"

// Restricted reports whether a resource carries a restricted security label in meta.security or, for a
// DocumentReference, in securityLabel.
func Restricted(o *Object) bool {
	check := func(c *Object) bool {
		for _, l := range RestrictedLabels {
			if c.String("system") == l[0] && c.String("code") == l[1] {
				return true
			}
		}
		return false
	}
	for _, v := range arrayOf(o.Object("meta"), "security") {
		if c, ok := v.(*Object); ok && check(c) {
			return true
		}
	}
	for _, v := range arrayOf(o, "securityLabel") {
		cc, _ := v.(*Object)
		for _, x := range arrayOf(cc, "coding") {
			if c, ok := x.(*Object); ok && check(c) {
				return true
			}
		}
	}
	return false
}

func arrayOf(o *Object, key string) []any {
	v, _ := o.Get(key)
	a, _ := v.([]any)
	return a
}
