package conformance

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// The patient-rights group runs when the server declares the rights workflow in its CapabilityStatement (Task
// supportedProfile and operations, Carta's rights.md §10). It writes: requests in patient A's record (use test
// patients).
const (
	pcIG              = "HL7 Patient Request for Corrections 1.0.0"
	pcTaskProfile     = "http://hl7.org/fhir/uv/patient-corrections/StructureDefinition/patient-correction-task"
	pcCommTypes       = "http://hl7.org/fhir/uv/patient-corrections/CodeSystem/PatientCorrectionCommunicationTypes"
	pcBusinessStatus  = "http://hl7.org/fhir/uv/patient-corrections/CodeSystem/PatientCorrectionBusinessStatus"
	requestedPeriod   = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Task.requestedPeriod"
	cartaBase         = "https://carta-fhir.github.io/fhir"
	cartaAccessProf   = cartaBase + "/StructureDefinition/access-request"
	cartaRequestTypes = cartaBase + "/CodeSystem/request-type"
)

func (t *T) declaresProfile(typ, profile string) bool {
	for _, p := range list(t.resourceDecl(typ), "supportedProfile") {
		if p == profile {
			return true
		}
	}
	return false
}

func (t *T) declaresOperation(typ, name string) bool {
	for _, o := range list(t.resourceDecl(typ), "operation") {
		n := str(o, "name")
		if n == name || strings.ReplaceAll(n, "-", "") == strings.ReplaceAll(name, "-", "") {
			return true
		}
	}
	return false
}

// needCorrections omits the test unless the server declares the HL7 corrections workflow.
func (t *T) needCorrections() {
	if !t.declaresProfile("Task", pcTaskProfile) || !t.declaresOperation("Communication", "correctionrequest") {
		t.Omitf("the server does not declare the patient-correction-task profile and $correctionrequest")
	}
}

// needAccessRights omits the test unless the server declares Carta's access-request profile and operations.
func (t *T) needAccessRights(ops ...string) {
	if !t.declaresProfile("Task", cartaAccessProf) {
		t.Omitf("the server does not declare the access-request profile")
	}
	for _, op := range ops {
		if !t.declaresOperation("Task", op) {
			t.Omitf("the server does not declare $%s on Task", op)
		}
	}
}

func (t *T) practitioner() string {
	tok := t.Config().Practitioner.Token
	if tok == "" {
		t.Skipf("needs a practitioner's token (user/ scopes) for the provider side")
	}
	return tok
}

// correctionBundle is the IG's patient-correction-bundle: one Communication with the text, and the record to
// correct as a payload reference (record: "" for none); extra adds elements (about, for a disagreement).
func correctionBundle(category, patient, text, record, extra string) []byte {
	payload := `{"contentString":` + quote(text) + `}`
	if record != "" {
		payload += `,{"contentReference":{"reference":` + quote(record) + `}}`
	}
	return []byte(`{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Communication","status":"completed",
		"category":[{"coding":[{"system":"` + pcCommTypes + `","code":"` + category + `"}]}],
		"subject":{"reference":"Patient/` + patient + `"}` + extra + `,
		"payload":[` + payload + `]}}]}`)
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

// fileCorrection files an amendment request about one of A's documents and returns the Task the server opened.
func (t *T) fileCorrection() (map[string]any, map[string]any) {
	id, tok := t.patientA()
	doc := t.aDocuments()[0]
	body := correctionBundle("medRecCxReq", id, "Conformance test: this document is wrong (filed by the conformance suite).",
		"DocumentReference/"+str(doc, "id"), "")
	r := t.Do(http.MethodPost, "Communication/$correctionrequest", Req{Token: tok, ContentType: "application/fhir+json", Body: body})
	if r.Status != http.StatusOK && r.Status != http.StatusCreated {
		t.Fatalf("$correctionrequest: status %d", r.Status)
	}
	var task map[string]any
	for _, res := range resources(r.JSON(), "") {
		if str(res, "resourceType") == "Task" {
			task = res
		}
	}
	if task == nil {
		t.Fatalf("$correctionrequest answered without the Task it opened")
	}
	return task, doc
}

// fileAccess files an access request as patient A with a client-chosen due date and returns the Task.
func (t *T) fileAccess() map[string]any {
	id, tok := t.patientA()
	body := `{"resourceType":"Task","status":"ready","intent":"order","authoredOn":"2001-01-01",
		"code":{"coding":[{"system":"` + cartaRequestTypes + `","code":"access-copy"}]},"for":{"reference":"Patient/` + id + `"},
		"restriction":{"period":{"end":"2099-12-31"}}}`
	r := t.Do(http.MethodPost, "Task", Req{Token: tok, ContentType: "application/fhir+json", Body: []byte(body)})
	if r.Status != http.StatusCreated {
		t.Fatalf("filing an access request: status %d", r.Status)
	}
	return r.JSON()
}

// putStatus moves a Task to a status pair as the practitioner, by PUT of the whole Task.
func (t *T) putStatus(task map[string]any, tok, status, system, code string) *Resp {
	next := map[string]any{}
	for k, v := range task {
		next[k] = v
	}
	delete(next, "meta")
	next["status"] = status
	next["businessStatus"] = map[string]any{"coding": []any{map[string]any{"system": system, "code": code}}}
	b, _ := json.Marshal(next)
	return t.Do(http.MethodPut, "Task/"+str(task, "id"), Req{Token: tok, ContentType: "application/fhir+json", Body: b})
}

func params(kv ...string) []byte {
	var ps []string
	for i := 0; i+2 < len(kv); i += 3 {
		ps = append(ps, `{"name":`+quote(kv[i])+`,"`+kv[i+1]+`":`+quote(kv[i+2])+`}`)
	}
	return []byte(`{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`)
}

func due(task map[string]any) string {
	if d := str(task, "restriction", "period", "end"); d != "" {
		return d
	}
	for _, e := range list(task, "extension") {
		if str(e, "url") == requestedPeriod {
			return str(e, "valuePeriod", "end")
		}
	}
	return ""
}

func rightsGroup() Group {
	return Group{ID: "rights", Title: "Patient rights", Description: "When the server declares the patient-rights workflow: amendment requests (HL7 Patient Request for Corrections) and Carta's access requests, with the rules 45 CFR 164.524 and 164.526 set. These tests write requests into patient A's record.", Tests: []Test{
		{ID: "rights-correction-request", Title: "$correctionrequest opens a Task ready/queued with its due date",
			Description: "An amendment request through $correctionrequest creates a Task in ready/queued whose requestedPeriod end is the due date, at most 60 days after receipt.",
			Requirement: pcIG + " OperationDefinition-correction-request.html; 45 CFR 164.526(b)(2)",
			Run: func(t *T) {
				t.needCorrections()
				task, _ := t.fileCorrection()
				bs := codings(task["businessStatus"])
				t.Check(str(task, "status") == "ready" && contains(bs, pcBusinessStatus+"|queued"), "status %q, businessStatus %v, want ready/queued", str(task, "status"), bs)
				d := ""
				for _, e := range list(task, "extension") {
					if str(e, "url") == requestedPeriod {
						d = str(e, "valuePeriod", "end")
					}
				}
				limit := time.Now().UTC().AddDate(0, 0, 61).Format("2006-01-02")
				t.Check(d != "" && d <= limit, "requestedPeriod end %q, want a due date within 60 days", d)
			}},
		{ID: "rights-patient-cannot-complete", Title: "A patient cannot complete their own request",
			Description: "Patient A's PUT of their amendment Task as completed/completed is refused (403 or 422).",
			Requirement: pcIG + " StructureDefinition-patient-correction-task.html; 45 CFR 164.526(d)",
			Run: func(t *T) {
				t.needCorrections()
				_, tok := t.patientA()
				task, _ := t.fileCorrection()
				r := t.putStatus(task, tok, "completed", pcBusinessStatus, "completed")
				t.Check(r.Status == http.StatusForbidden || r.Status == http.StatusUnprocessableEntity, "status %d, want 403 or 422", r.Status)
			}},
		{ID: "rights-unknown-business-status", Title: "A business status outside the HL7 code system is refused",
			Description: "The practitioner's PUT with businessStatus inform-rebuttal-option (in the IG's prose, not its CodeSystem) is refused with a 4xx.",
			Requirement: pcIG + " CodeSystem-PatientCorrectionBusinessStatus.html",
			Run: func(t *T) {
				t.needCorrections()
				pr := t.practitioner()
				task, _ := t.fileCorrection()
				r := t.putStatus(task, pr, "in-progress", pcBusinessStatus, "inform-rebuttal-option")
				t.Check(r.Status >= 400 && r.Status < 500, "status %d, want a refusal", r.Status)
			}},
		{ID: "rights-disagreement-needs-denial", Title: "A statement of disagreement needs a prior denial",
			Description: "A medRecCxDenialDisagree Communication about a request that was not denied is refused with 422.",
			Requirement: "45 CFR 164.526(d)(1)(ii)",
			Run: func(t *T) {
				t.needCorrections()
				id, tok := t.patientA()
				task, _ := t.fileCorrection()
				body := correctionBundle("medRecCxDenialDisagree", id, "I disagree.", "", `,"about":[{"reference":"Task/`+str(task, "id")+`"}]`)
				r := t.Do(http.MethodPost, "Communication/$correctionrequest", Req{Token: tok, ContentType: "application/fhir+json", Body: body})
				t.Check(r.Status == http.StatusUnprocessableEntity, "status %d, want 422", r.Status)
			}},
		{ID: "rights-dispute-with-record", Title: "A search returning the disputed record returns its dispute",
			Description: "Request → in review → denied → statement of disagreement; then the practitioner's search for the document returns, with it, the dispute documents appending to it.",
			Requirement: "45 CFR 164.526(d)(4)",
			Run: func(t *T) {
				t.needCorrections()
				t.needAccessRights("deny")
				id, tok := t.patientA()
				pr := t.practitioner()
				task, doc := t.fileCorrection()
				if r := t.putStatus(task, pr, "in-progress", pcBusinessStatus, "in-review"); r.Status != http.StatusOK {
					t.Fatalf("start review: status %d", r.Status)
				}
				r := t.Do(http.MethodPost, "Task/"+str(task, "id")+"/$deny", Req{Token: pr, ContentType: "application/fhir+json", Body: params(
					"ground", "valueCode", "accurate-and-complete", "basis", "valueString", "The record is accurate and complete (conformance test).",
					"contact-name", "valueString", "Privacy Officer", "contact-phone", "valueString", "+1 555 0100", "complaint", "valueString", "Write to the Privacy Officer.")})
				if r.Status != http.StatusOK {
					t.Fatalf("deny: status %d", r.Status)
				}
				body := correctionBundle("medRecCxDenialDisagree", id, "I disagree (conformance test).", "", `,"about":[{"reference":"Task/`+str(task, "id")+`"}]`)
				if r := t.Do(http.MethodPost, "Communication/$correctionrequest", Req{Token: tok, ContentType: "application/fhir+json", Body: body}); r.Status != http.StatusOK && r.Status != http.StatusCreated {
					t.Fatalf("statement of disagreement: status %d", r.Status)
				}
				s := t.Get("DocumentReference?_id="+str(doc, "id"), pr)
				var dispute []string
				for _, inc := range resources(s.JSON(), "include") {
					for _, rel := range list(inc, "relatesTo") {
						if strings.HasSuffix(str(rel, "target", "reference"), "DocumentReference/"+str(doc, "id")) {
							dispute = append(dispute, str(inc, "id"))
						}
					}
				}
				t.Check(len(dispute) >= 2, "the search returned %d dispute documents with the record, want the request, the denial and the statement", len(dispute))
			}},
		{ID: "rights-access-due-date", Title: "The access request's due date is the server's",
			Description: "An access request filed with a client-chosen receipt and due date gets the server's: due at most 30 days after today.",
			Requirement: "45 CFR 164.524(b)(2)",
			Run: func(t *T) {
				t.needAccessRights()
				task := t.fileAccess()
				d := due(task)
				limit := time.Now().UTC().AddDate(0, 0, 31).Format("2006-01-02")
				t.Check(d != "" && d != "2099-12-31" && d <= limit, "due date %q, want one the server computed (at most 30 days)", d)
				t.Check(!strings.HasPrefix(str(task, "authoredOn"), "2001"), "authoredOn %q: the client's receipt time was kept", str(task, "authoredOn"))
			}},
		{ID: "rights-one-extension", Title: "A request may be extended once",
			Description: "$extend with a reason and a date within 30 days is accepted once; a second is refused with 422.",
			Requirement: "45 CFR 164.524(b)(2)(ii)",
			Run: func(t *T) {
				t.needAccessRights("extend")
				pr := t.practitioner()
				task := t.fileAccess()
				d, err := time.Parse("2006-01-02", due(task))
				if err != nil {
					t.Fatalf("the request has no due date: %q", due(task))
				}
				ext := func(days int) *Resp {
					return t.Do(http.MethodPost, "Task/"+str(task, "id")+"/$extend", Req{Token: pr, ContentType: "application/fhir+json",
						Body: params("reason", "valueString", "Records in off-site storage (conformance test).", "due", "valueDate", d.AddDate(0, 0, days).Format("2006-01-02"))})
				}
				first := ext(10)
				t.Check(first.Status == http.StatusOK, "first extension: status %d, want 200", first.Status)
				second := ext(20)
				t.Check(second.Status == http.StatusUnprocessableEntity, "second extension: status %d, want 422", second.Status)
			}},
		{ID: "rights-denial-notice", Title: "A denial without its required notice parts is refused",
			Description: "$deny with a ground but no basis is refused with 422 (the notice must state the basis).",
			Requirement: "45 CFR 164.524(d)(2)",
			Run: func(t *T) {
				t.needAccessRights("deny")
				pr := t.practitioner()
				task := t.fileAccess()
				r := t.Do(http.MethodPost, "Task/"+str(task, "id")+"/$deny", Req{Token: pr, ContentType: "application/fhir+json",
					Body: params("ground", "valueCode", "endanger-life-safety")})
				t.Check(r.Status == http.StatusUnprocessableEntity, "status %d, want 422", r.Status)
			}},
	}}
}
