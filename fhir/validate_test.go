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
	}{
		{"Malformed", `{"resourceType":"Patient",`, "", "not valid JSON"},
		{"NotObject", `[1]`, "", "must be a JSON object"},
		{"DuplicateKey", `{"resourceType":"Patient","id":"a","id":"b"}`, "", "appears twice"},
		{"UnknownType", `{"resourceType":"Patientx"}`, "resourceType", "not an R4 resource type"},
		{"UnknownElement", `{"resourceType":"Patient","someUnknownElement":{"keep":"me"}}`, "Patient.someUnknownElement", "unknown element"},
		{"WrongCase", `{"resourceType":"Patient","BirthDate":"1970-01-01"}`, "Patient.BirthDate", `did you mean "birthDate"`},
		{"BadDate", `{"resourceType":"Patient","birthDate":"yesterday"}`, "Patient.birthDate", "four-digit year"},
		{"ImpossibleDate", `{"resourceType":"Patient","birthDate":"2021-02-30"}`, "Patient.birthDate", "day must be 01-28"},
		{"DateTimeNoZone", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2020-01-01T10:00:00"}`, "Observation.effectiveDateTime", "needs a zone"},
		{"BadGender", `{"resourceType":"Patient","gender":"M"}`, "Patient.gender", "required value set"},
		{"EmptyString", `{"resourceType":"Patient","name":[{"family":""}]}`, "Patient.name[0].family", "empty strings"},
		{"WrongPrimitiveType", `{"resourceType":"Patient","active":"yes"}`, "Patient.active", "expected a boolean"},
		{"IntegerTooBig", `{"resourceType":"Patient","multipleBirthInteger":4294967296}`, "Patient.multipleBirthInteger", "2147483647"},
		{"TwoChoices", `{"resourceType":"Patient","deceasedBoolean":true,"deceasedDateTime":"2020-01-01"}`, "Patient.deceasedDateTime", "only one of deceased[x]"},
		{"MissingRequired", `{"resourceType":"DocumentReference","content":[{"attachment":{"url":"http://x"}}]}`, "DocumentReference.status", "status is required"},
		{"MissingRequiredComplex", `{"resourceType":"DocumentReference","status":"current"}`, "DocumentReference.content", "content is required"},
		{"TaskMissingIntent", `{"resourceType":"Task","status":"draft"}`, "Task.intent", "intent is required"},
		{"ArrayForSingle", `{"resourceType":"Patient","gender":["male"]}`, "Patient.gender", "must not be a JSON array"},
		{"SingleForArray", `{"resourceType":"Patient","name":{"family":"x"}}`, "Patient.name", "must be a JSON array"},
		{"EmptyArray", `{"resourceType":"Patient","name":[]}`, "Patient.name", "empty arrays"},
		{"EmptyObject", `{"resourceType":"Patient","name":[{}]}`, "Patient.name[0]", "empty objects"},
		{"NullInArray", `{"resourceType":"Patient","name":[{"given":[null,"James"]}]}`, "Patient.name[0].given[0]", "null is only allowed"},
		{"MisalignedExt", `{"resourceType":"Patient","name":[{"given":["a","b"],"_given":[null]}]}`, "Patient.name[0].given", "same number"},
		{"ExtensionNoURL", `{"resourceType":"Patient","extension":[{"valueString":"x"}]}`, "Patient.extension[0].url", "url is required"},
		{"ExtensionBoth", `{"resourceType":"Patient","extension":[{"url":"http://x","valueString":"x","extension":[{"url":"y","valueString":"z"}]}]}`, "Patient.extension[0]", "ext-1"},
		{"ContainedInContained", `{"resourceType":"Patient","contained":[{"resourceType":"Organization","id":"o","contained":[{"resourceType":"Organization","id":"p"}]}]}`, "Patient.contained[0].contained", "dom-2"},
		{"ContainedBadElement", `{"resourceType":"Patient","contained":[{"resourceType":"Organization","id":"o","nmae":"x"}]}`, "Patient.contained[0].nmae", "unknown element"},
		{"BadID", `{"resourceType":"Patient","id":"a b"}`, "Patient.id", "not a valid id"},
		{"BadBase64", `{"resourceType":"Binary","contentType":"text/plain","data":"not base64!"}`, "Binary.data", "base64"},
		{"BadXHTML", `{"resourceType":"Patient","text":{"status":"generated","div":"<div>unclosed"}}`, "Patient.text.div", "well-formed"},
		{"PrimitiveExtUnknown", `{"resourceType":"Patient","_birthDate":{"foo":1}}`, "Patient.birthDate.foo", "unknown element"},
		{"LeadingZeroNumber", `{"resourceType":"Patient","multipleBirthInteger":01}`, "", "leading zero"},
		{"BadUTF8", "{\"resourceType\":\"Patient\",\"id\":\"\xff\"}", "", "UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseResource([]byte(tt.body), "")
			fe, ok := AsError(err)
			if !ok {
				t.Fatalf("accepted, want a 400 naming %q", tt.wantExpr)
			}
			if fe.Status != 400 {
				t.Errorf("status %d, want 400", fe.Status)
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
