package fhir

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func mustParseFile(t *testing.T, name string) *Object {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("../testdata/hl7-r4-examples", name))
	if err != nil {
		t.Fatal(err)
	}
	o, err := ParseResource(raw, "")
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestRegistryCoversRequiredParameters(t *testing.T) {
	r := Params()
	want := map[string][]string{
		"Patient":           {"_id", "_lastUpdated", "identifier", "name", "family", "given", "birthdate", "gender", "address", "address-city", "address-postalcode", "address-state", "telecom", "phone", "email", "general-practitioner", "organization"},
		"DocumentReference": {"patient", "subject", "category", "type", "date", "period", "status", "identifier", "author", "relatesto", "contenttype"},
		"Task":              {"patient", "subject", "owner", "requester", "status", "business-status", "code", "focus", "authored-on", "modified", "part-of", "identifier", "due-date"},
		"Communication":     {"patient", "subject", "about", "part-of", "category", "sent", "sender", "recipient", "identifier"},
		"Provenance":        {"target", "patient"},
		"AuditEvent":        {"patient", "agent", "entity", "date", "type"},
		"Observation":       {"patient", "category", "code", "date", "value-quantity"},
		"Binary":            {"_id", "_lastUpdated"},
	}
	for typ, codes := range want {
		for _, c := range codes {
			if r.Lookup(typ, c) == nil {
				t.Errorf("%s?%s is not registered", typ, c)
			}
		}
	}
	for _, typ := range []string{"Observation", "Condition", "Encounter", "Immunization", "Procedure", "MedicationRequest", "DiagnosticReport", "CarePlan", "Goal", "Claim", "ExplanationOfBenefit", "ImagingStudy", "Communication", "DocumentReference", "Task"} {
		if r.Lookup(typ, "patient") == nil {
			t.Errorf("%s has no patient parameter", typ)
		}
	}
	t.Logf("%d R4 parameters not offered", len(r.Unsupported))
}

func TestExtractPatient(t *testing.T) {
	x := &Indexer{Base: "http://localhost/fhir", Loc: time.UTC}
	idx := x.Extract(mustParseFile(t, "patient-example.json"))
	has := func(param, norm string) bool {
		for _, s := range idx.Strings {
			if s.Param == param && s.Norm == norm {
				return true
			}
		}
		return false
	}
	for _, c := range []struct{ p, v string }{{"family", "chalmers"}, {"given", "peter"}, {"name", "jim"}, {"address-city", "pleasantville"}, {"address", "534 erewhon st"}} {
		if !has(c.p, c.v) {
			t.Errorf("no string entry %s=%s in %+v", c.p, c.v, idx.Strings)
		}
	}
	tok := func(param, system, code string) bool {
		for _, e := range idx.Tokens {
			if e.Param == param && e.System == system && e.Code == code {
				return true
			}
		}
		return false
	}
	if !tok("gender", "http://hl7.org/fhir/administrative-gender", "male") {
		t.Errorf("gender token missing: %+v", idx.Tokens)
	}
	if !tok("identifier", "urn:oid:1.2.36.146.595.217.0.1", "12345") {
		t.Errorf("identifier token missing")
	}
	if !tok("phone", "phone", "(03) 5555 6473") {
		t.Errorf("phone token missing")
	}
	var birth *DateEntry
	for i, d := range idx.Dates {
		if d.Param == "birthdate" {
			birth = &idx.Dates[i]
		}
	}
	if birth == nil || time.UnixMicro(birth.Lo).UTC().Format(time.DateOnly) != "1974-12-25" || birth.Hi-birth.Lo != int64(24*time.Hour/time.Microsecond) {
		t.Errorf("birthdate entry %+v", birth)
	}
	found := false
	for _, r := range idx.Refs {
		if r.Param == "organization" && r.Type == "Organization" && r.ID == "1" {
			found = true
		}
	}
	if !found {
		t.Errorf("organization ref missing: %+v", idx.Refs)
	}
}

func TestExtractChoiceAndResolve(t *testing.T) {
	x := &Indexer{Loc: time.UTC}
	idx := x.Extract(mustParseFile(t, "observation-example.json"))
	var q, subj, pat bool
	for _, e := range idx.Quantities {
		if e.Param == "value-quantity" && e.Value == 185 && e.Code == "[lb_av]" {
			q = true
		}
	}
	for _, r := range idx.Refs {
		if r.Param == "subject" && r.Type == "Patient" && r.ID == "example" {
			subj = true
		}
		if r.Param == "patient" && r.Type == "Patient" && r.ID == "example" {
			pat = true
		}
	}
	if !q || !subj || !pat {
		t.Errorf("quantity %v subject %v patient %v: %+v %+v", q, subj, pat, idx.Quantities, idx.Refs)
	}
}

func TestNormalizeString(t *testing.T) {
	for in, want := range map[string]string{"Chalmers": "chalmers", "Agustín": "agustin", "ÉCOLE": "ecole", "Müller": "muller"} {
		if got := NormalizeString(in); got != want {
			t.Errorf("NormalizeString(%q) = %q, want %q", in, got, want)
		}
	}
}
