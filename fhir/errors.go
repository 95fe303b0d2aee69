package fhir

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	r4 "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// IssueType is a code of http://hl7.org/fhir/issue-type, the vocabulary of OperationOutcome.issue.code.
type IssueType = r4.IssueType

// The issue types the server uses.
const (
	IssueInvalid       = r4.IssueTypeInvalid
	IssueStructure     = r4.IssueTypeStructure
	IssueRequired      = r4.IssueTypeRequired
	IssueValue         = r4.IssueTypeValue
	IssueInvariant     = r4.IssueTypeInvariant
	IssueSecurity      = r4.IssueTypeSecurity
	IssueLogin         = r4.IssueTypeLogin
	IssueExpired       = r4.IssueTypeExpired
	IssueForbidden     = r4.IssueTypeForbidden
	IssueProcessing    = r4.IssueTypeProcessing
	IssueNotSupported  = r4.IssueTypeNotSupported
	IssueDuplicate     = r4.IssueTypeDuplicate
	IssueMultiple      = r4.IssueTypeMultipleMatches
	IssueNotFound      = r4.IssueTypeNotFound
	IssueDeleted       = r4.IssueTypeDeleted
	IssueTooLong       = r4.IssueTypeTooLong
	IssueCodeInvalid   = r4.IssueTypeCodeInvalid
	IssueTooCostly     = r4.IssueTypeTooCostly
	IssueBusinessRule  = r4.IssueTypeBusinessRule
	IssueConflict      = r4.IssueTypeConflict
	IssueTransient     = r4.IssueTypeTransient
	IssueException     = r4.IssueTypeException
	IssueInformational = r4.IssueTypeInformational
	IssueIncomplete    = r4.IssueTypeIncomplete
)

// Severity is a code of http://hl7.org/fhir/issue-severity.
type Severity = r4.IssueSeverity

// Issue severities.
const (
	SeverityFatal       = r4.IssueSeverityFatal
	SeverityError       = r4.IssueSeverityError
	SeverityWarning     = r4.IssueSeverityWarning
	SeverityInformation = r4.IssueSeverityInformation
)

// Issue is one problem found with a request.
type Issue struct {
	Severity    Severity
	Code        IssueType
	Diagnostics string
	// Expression names the element or parameter at fault, in FHIRPath (e.g. "Patient.name[0].given[1]").
	Expression string
}

// Error is the one error type of the server's domain: an HTTP status plus the issues that explain it. Storage,
// validation, search and authorization all return *Error; handlers turn it into an OperationOutcome. Any other
// error is an internal fault whose details are logged, never shown.
type Error struct {
	Status int
	Issues []Issue
	// Headers are extra response headers (e.g. WWW-Authenticate on 401).
	Headers map[string]string
}

func (e *Error) Error() string {
	if len(e.Issues) == 0 {
		return http.StatusText(e.Status)
	}
	parts := make([]string, 0, len(e.Issues))
	for _, is := range e.Issues {
		m := is.Diagnostics
		if is.Expression != "" {
			m = is.Expression + ": " + m
		}
		parts = append(parts, m)
	}
	return strings.Join(parts, "; ")
}

// Errorf returns an *Error with one error-severity issue.
func Errorf(status int, code IssueType, format string, args ...any) *Error {
	return &Error{Status: status, Issues: []Issue{{Severity: SeverityError, Code: code, Diagnostics: fmt.Sprintf(format, args...)}}}
}

// At returns an *Error with one issue about the element or parameter named by expression.
func At(status int, code IssueType, expression, format string, args ...any) *Error {
	return &Error{Status: status, Issues: []Issue{{Severity: SeverityError, Code: code, Expression: expression, Diagnostics: fmt.Sprintf(format, args...)}}}
}

// NotFound is the error for a resource that does not exist or that the caller may not know exists.
func NotFound(typ, id string) *Error {
	return Errorf(http.StatusNotFound, IssueNotFound, "%s/%s is not known", typ, id)
}

// AsError returns err as an *Error when it is one (or wraps one).
func AsError(err error) (*Error, bool) {
	var fe *Error
	if errors.As(err, &fe) {
		return fe, true
	}
	return nil, false
}

// Outcome returns the OperationOutcome JSON for err. A non-*Error is reported as a 500 with a generic message;
// the caller must log the original.
func Outcome(err error) (status int, body []byte) {
	fe, ok := AsError(err)
	if !ok {
		fe = Errorf(http.StatusInternalServerError, IssueException, "internal server error; the server logged the details")
	}
	return fe.Status, OutcomeJSON(fe.Issues...)
}

// OutcomeJSON builds an OperationOutcome holding issues.
func OutcomeJSON(issues ...Issue) []byte {
	oo := r4.OperationOutcome{Issue: make([]r4.OperationOutcomeIssue, 0, len(issues))}
	for _, is := range issues {
		oi := r4.OperationOutcomeIssue{Severity: is.Severity, Code: is.Code}
		if is.Diagnostics != "" {
			d := is.Diagnostics
			oi.Diagnostics = &d
			text := d
			oi.Details = &r4.CodeableConcept{Text: &text}
		}
		if is.Expression != "" {
			oi.Expression = []string{is.Expression}
		}
		oo.Issue = append(oo.Issue, oi)
	}
	b, err := json.Marshal(oo)
	if err != nil {
		// The struct above always marshals; keep a valid body regardless.
		return []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}`)
	}
	return b
}

// Info returns an OperationOutcome with one information issue, for Prefer: return=OperationOutcome.
func Info(format string, args ...any) []byte {
	return OutcomeJSON(Issue{Severity: SeverityInformation, Code: IssueInformational, Diagnostics: fmt.Sprintf(format, args...)})
}
