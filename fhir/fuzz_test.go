package fhir

import (
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseResource feeds arbitrary bytes to the parser and validator. They must never panic, must refuse with a
// 400 or 422 *Error, and what they accept must survive a write and re-read unchanged.
func FuzzParseResource(f *testing.F) {
	for _, name := range []string{"patient-example.json", "observation-decimal.json", "documentreference-example.json", "task-example1.json", "bundle-transaction.json"} {
		if b, err := os.ReadFile(filepath.Join("../testdata/hl7-r4-examples", name)); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		`{"resourceType":"Patient","_birthDate":{"extension":[{"url":"x","valueString":"y"}]}}`,
		`{"resourceType":"Patient","name":[{"given":[null,"a"],"_given":[{"id":"1"},null]}]}`,
		`{"resourceType":"Patient","id":"a","id":"b"}`,
		`{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e400}}`,
		`{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">&amp;</div>"}}`,
		"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"\\ud800\"}]}",
		`[[[[[[[[[[]]]]]]]]]]`, `"x"`, `{}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseResource(data, "")
		if err != nil {
			fe, ok := AsError(err)
			if !ok || (fe.Status != 400 && fe.Status != 422) || len(fe.Issues) == 0 {
				t.Fatalf("refusal is not a 400/422 with issues: %v", err)
			}
			return
		}
		out := AppendJSON(nil, o)
		o2, err := ParseResource(out, "")
		if err != nil {
			t.Fatalf("accepted %q but not its own output %q: %v", data, out, err)
		}
		if !Equal(o, o2) {
			t.Fatalf("round trip changed %q into %q", data, out)
		}
	})
}

// FuzzParseQuery feeds arbitrary query strings to the search parser: no panics, and refusals are 400s that name
// a parameter.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"family=smith&_count=10", "birthdate=ge2020-01-01&birthdate=lt2021", "identifier=urn:x|1,urn:y|2",
		"subject:Patient.name=x", "_has:Observation:patient:code=1234", "_include=Observation:subject&_revinclude=Provenance:target",
		"value-quantity=ap5.4|http://unitsofmeasure.org|mg", "code:not=x", "gender:missing=true", "_sort=-date,_id",
		"date=2020-13-45", "_count=-1", "name:contains=%00", "subject.subject.subject.subject.name=x", "_elements=id,name&_summary=true",
	} {
		f.Add("Observation", s)
		f.Add("Patient", s)
	}
	f.Fuzz(func(t *testing.T, typ, query string) {
		if !R4().IsResourceType(typ) {
			return
		}
		vals, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		_, err = ParseQuery(typ, vals, QueryOptions{Base: "http://x/fhir"})
		if err != nil {
			fe, ok := AsError(err)
			if !ok || fe.Status != 400 || len(fe.Issues) == 0 {
				t.Fatalf("refusal of %s?%s is not a 400 with issues: %v", typ, query, err)
			}
		}
	})
}
