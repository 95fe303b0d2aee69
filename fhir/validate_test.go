package fhir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExamplesValidate(t *testing.T) {
	files, _ := filepath.Glob("../testdata/hl7-r4-examples/*.json")
	if len(files) < 200 {
		t.Fatalf("found %d examples", len(files))
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseResource(raw, "")
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), strings.ReplaceAll(err.Error(), "; ", "\n   "))
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	tests := []struct {
		name, body, wantExpr, wantMsg string
		status                        int
	}{
		{"Malformed", `{"resourceType":"Patient",`, "", "not valid JSON", 0},
		{"NotObject", `[1]`, "", "must be a JSON object", 0},
		{"DuplicateKey", `{"resourceType":"Patient","id":"a","id":"b"}`, "", "appears twice", 0},
		{"UnknownType", `{"resourceType":"Patientx"}`, "resourceType", "not an R4 resource type", 0},
		{"UnknownElement", `{"resourceType":"Patient","someUnknownElement":{"keep":"me"}}`, "Patient.someUnknownElement", "unknown element", 0},
		{"WrongCase", `{"resourceType":"Patient","BirthDate":"1970-01-01"}`, "Patient.BirthDate", `did you mean "birthDate"`, 0},
		{"BadDate", `{"resourceType":"Patient","birthDate":"yesterday"}`, "Patient.birthDate", "four-digit year", 0},
		{"ImpossibleDate", `{"resourceType":"Patient","birthDate":"2021-02-30"}`, "Patient.birthDate", "day must be 01-28", 0},
		{"DateTimeNoZone", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2020-01-01T10:00:00"}`, "Observation.effectiveDateTime", "needs a zone", 0},
		{"BadGender", `{"resourceType":"Patient","gender":"M"}`, "Patient.gender", "required value set", 0},
		{"EmptyString", `{"resourceType":"Patient","name":[{"family":""}]}`, "Patient.name[0].family", "empty strings", 0},
		{"WrongPrimitiveType", `{"resourceType":"Patient","active":"yes"}`, "Patient.active", "expected a boolean", 0},
		{"IntegerTooBig", `{"resourceType":"Patient","multipleBirthInteger":4294967296}`, "Patient.multipleBirthInteger", "2147483647", 0},
		{"TwoChoices", `{"resourceType":"Patient","deceasedBoolean":true,"deceasedDateTime":"2020-01-01"}`, "Patient.deceasedDateTime", "only one of deceased[x]", 0},
		{"MissingRequired", `{"resourceType":"DocumentReference","content":[{"attachment":{"url":"http://x"}}]}`, "DocumentReference.status", "status is required", 0},
		{"MissingRequiredComplex", `{"resourceType":"DocumentReference","status":"current"}`, "DocumentReference.content", "content is required", 0},
		{"TaskMissingIntent", `{"resourceType":"Task","status":"draft"}`, "Task.intent", "intent is required", 0},
		{"ArrayForSingle", `{"resourceType":"Patient","gender":["male"]}`, "Patient.gender", "must not be a JSON array", 0},
		{"SingleForArray", `{"resourceType":"Patient","name":{"family":"x"}}`, "Patient.name", "must be a JSON array", 0},
		{"EmptyArray", `{"resourceType":"Patient","name":[]}`, "Patient.name", "empty arrays", 0},
		{"EmptyObject", `{"resourceType":"Patient","name":[{}]}`, "Patient.name[0]", "empty objects", 0},
		{"NullInArray", `{"resourceType":"Patient","name":[{"given":[null,"James"]}]}`, "Patient.name[0].given[0]", "null is only allowed", 0},
		{"MisalignedExt", `{"resourceType":"Patient","name":[{"given":["a","b"],"_given":[null]}]}`, "Patient.name[0].given", "same number", 0},
		{"ExtensionNoURL", `{"resourceType":"Patient","extension":[{"valueString":"x"}]}`, "Patient.extension[0].url", "url is required", 0},
		{"ExtensionBoth", `{"resourceType":"Patient","extension":[{"url":"http://x","valueString":"x","extension":[{"url":"y","valueString":"z"}]}]}`, "Patient.extension[0]", "ext-1", 422},
		{"ContainedInContained", `{"resourceType":"Patient","managingOrganization":{"reference":"#o"},"contained":[{"resourceType":"Organization","id":"o","contained":[{"resourceType":"Organization","id":"p"}]}]}`, "Patient.contained[0].contained", "dom-2", 422},
		{"PeriodBackwards", `{"resourceType":"Patient","name":[{"family":"x","period":{"start":"2020-02-01","end":"2020-01-01"}}]}`, "Patient.name[0].period", "per-1", 422},
		{"DanglingLocalRef", `{"resourceType":"Patient","managingOrganization":{"reference":"#nope"}}`, "Patient.managingOrganization.reference", "ref-1", 422},
		{"UnreferencedContained", `{"resourceType":"Patient","contained":[{"resourceType":"Organization","id":"o","name":"x"}]}`, "Patient.contained[0]", "dom-3", 422},
		{"ContainedBadElement", `{"resourceType":"Patient","managingOrganization":{"reference":"#o"},"contained":[{"resourceType":"Organization","id":"o","nmae":"x"}]}`, "Patient.contained[0].nmae", "unknown element", 0},
		{"BadID", `{"resourceType":"Patient","id":"a b"}`, "Patient.id", "not a valid id", 0},
		{"BadBase64", `{"resourceType":"Binary","contentType":"text/plain","data":"not base64!"}`, "Binary.data", "base64", 0},
		{"BadXHTML", `{"resourceType":"Patient","text":{"status":"generated","div":"<div>unclosed"}}`, "Patient.text.div", "well-formed", 0},
		{"PrimitiveExtUnknown", `{"resourceType":"Patient","_birthDate":{"foo":1}}`, "Patient.birthDate.foo", "unknown element", 0},
		{"LeadingZeroNumber", `{"resourceType":"Patient","multipleBirthInteger":01}`, "", "leading zero", 0},
		{"BadUTF8", "{\"resourceType\":\"Patient\",\"id\":\"\xff\"}", "", "UTF-8", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseResource([]byte(tt.body), "")
			fe, ok := AsError(err)
			if !ok {
				t.Fatalf("accepted, want a 400 naming %q", tt.wantExpr)
			}
			want := tt.status
			if want == 0 {
				want = 400
			}
			if fe.Status != want {
				t.Errorf("status %d, want %d", fe.Status, want)
			}
			found := false
			for _, is := range fe.Issues {
				if is.Expression == tt.wantExpr && strings.Contains(is.Diagnostics, tt.wantMsg) {
					found = true
				}
			}
			if !found {
				t.Errorf("issues %+v; want expression %q with %q", fe.Issues, tt.wantExpr, tt.wantMsg)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	for name, body := range map[string]string{
		"PrimitiveExtensionOnly": `{"resourceType":"Patient","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]}}`,
		"NullWithExtension":      `{"resourceType":"Patient","name":[{"given":[null,"James"],"_given":[{"extension":[{"url":"http://x","valueString":"y"}]},null]}]}`,
		"RequiredViaExtension":   `{"resourceType":"DocumentReference","_status":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]},"content":[{"attachment":{"url":"http://x"}}]}`,
		"Decimals":               `{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}`,
		"BareResource":           `{"resourceType":"Patient"}`,
	} {
		if _, err := ParseResource([]byte(body), ""); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestManyMembersAndDuplicates(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"resourceType":"Patient"`)
	for i := 0; i < 200000; i++ {
		b.WriteString(`,"k`)
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString(string(rune('a' + i%26)))
		b.WriteString(`":1`)
	}
	b.WriteString(`,"resourceType":"Patient"}`)
	_, err := ParseJSON([]byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Fatalf("duplicate after many members: %v", err)
	}
}
