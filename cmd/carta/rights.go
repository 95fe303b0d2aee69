package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/handlers"
)

// rightsFlags are the settings of the patient-rights rules: who the records office is, what its notices say,
// and which jurisdiction profiles are in force.
type rightsFlags struct {
	jurisdictions, owner, ownerName, contactName, contactPhone, complaint, reviewHowTo, disagreeHowTo, configFile string
	statementMaxWords                                                                                             int
}

func addRightsFlags(fs *flag.FlagSet, getenv func(string) string) *rightsFlags {
	f := &rightsFlags{}
	fs.StringVar(&f.jurisdictions, "jurisdictions", getenv("CARTA_JURISDICTIONS"), "state profiles in force besides HIPAA, comma-separated (US-CA, US-TX, HIPAA-2021-NPRM, or codes from --rights-config); the earliest due date wins")
	fs.StringVar(&f.owner, "records-owner", envOr(getenv, "CARTA_RECORDS_OWNER", "Organization/records-office"), "the records contact requests are assigned to (a reference)")
	fs.StringVar(&f.ownerName, "records-owner-name", envOr(getenv, "CARTA_RECORDS_OWNER_NAME", "Records office"), "its name, shown on requests and letters")
	fs.StringVar(&f.contactName, "contact-name", getenv("CARTA_CONTACT_NAME"), "name or title of the contact person or office named in denial notices (required to deny unless given per denial)")
	fs.StringVar(&f.contactPhone, "contact-phone", getenv("CARTA_CONTACT_PHONE"), "telephone of that contact (required to deny unless given per denial)")
	fs.StringVar(&f.complaint, "complaint", getenv("CARTA_COMPLAINT"), "how to complain to the provider, as said in denial notices (default: contact the person above)")
	fs.StringVar(&f.reviewHowTo, "review-how-to", getenv("CARTA_REVIEW_HOW_TO"), "how to ask for a review of a denial of access, as said in notices")
	fs.StringVar(&f.disagreeHowTo, "disagree-how-to", getenv("CARTA_DISAGREE_HOW_TO"), "how to file a statement of disagreement, as said in notices")
	fs.IntVar(&f.statementMaxWords, "statement-max-words", 0, "limit of a statement of disagreement in words (0: none)")
	fs.StringVar(&f.configFile, "rights-config", getenv("CARTA_RIGHTS_CONFIG"), "JSON file with more jurisdiction profiles and holidays (docs/rights.md)")
	return f
}

// rightsFile is the --rights-config format.
type rightsFile struct {
	Profiles []struct {
		Code, Title, Source string
		Clocks              map[string]struct {
			Days, ExtensionDays, MaxExtensions int
			BusinessDays, ElectronicOnly       bool
		}
		Holidays        []string
		FederalHolidays bool
	}
	// Holidays apply to every business-day clock.
	Holidays []string
}

// rules builds the rights rules in force.
func (f *rightsFlags) rules(loc *time.Location) (*rights.Rules, []string, error) {
	available := append([]rights.Profile{}, rights.Profiles...)
	var extraHolidays []rights.Date
	if f.configFile != "" {
		b, err := os.ReadFile(f.configFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--rights-config: %w", err)
		}
		var rf rightsFile
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rf); err != nil {
			return nil, nil, fmt.Errorf("--rights-config %s: %w", f.configFile, err)
		}
		for _, h := range rf.Holidays {
			d, err := rights.ParseDate(h)
			if err != nil {
				return nil, nil, fmt.Errorf("--rights-config holidays: %w", err)
			}
			extraHolidays = append(extraHolidays, d)
		}
		for i, p := range rf.Profiles {
			if p.Code == "" || strings.EqualFold(p.Code, rights.HIPAA.Code) {
				return nil, nil, fmt.Errorf("--rights-config profile %d needs a code of its own (HIPAA is built in)", i)
			}
			prof := rights.Profile{Code: p.Code, Title: p.Title, Source: p.Source, FederalHolidays: p.FederalHolidays, Clocks: map[string]rights.Clock{}}
			for code, c := range p.Clocks {
				if _, ok := rights.HIPAA.Clocks[code]; !ok {
					var known []string
					for k := range rights.HIPAA.Clocks {
						known = append(known, k)
					}
					sort.Strings(known)
					return nil, nil, fmt.Errorf("--rights-config profile %s: no request type %q (known: %s)", p.Code, code, strings.Join(known, ", "))
				}
				if c.Days <= 0 {
					return nil, nil, fmt.Errorf("--rights-config profile %s: %s needs days > 0", p.Code, code)
				}
				prof.Clocks[code] = rights.Clock{Days: c.Days, BusinessDays: c.BusinessDays, ExtensionDays: c.ExtensionDays, MaxExtensions: c.MaxExtensions, ElectronicOnly: c.ElectronicOnly}
			}
			for _, h := range p.Holidays {
				d, err := rights.ParseDate(h)
				if err != nil {
					return nil, nil, fmt.Errorf("--rights-config profile %s: %w", p.Code, err)
				}
				prof.Holidays = append(prof.Holidays, d)
			}
			available = append(available, prof)
		}
	}
	profiles := []rights.Profile{rights.HIPAA}
	var codes []string
	for _, c := range strings.Split(f.jurisdictions, ",") {
		c = strings.TrimSpace(c)
		if c == "" || strings.EqualFold(c, "HIPAA") {
			continue
		}
		found := false
		for _, p := range available {
			if strings.EqualFold(p.Code, c) {
				profiles = append(profiles, p)
				found = true
			}
		}
		if !found {
			var known []string
			for _, p := range available {
				known = append(known, p.Code)
			}
			return nil, nil, usageErr("--jurisdictions: no profile %q (known: %s)", c, strings.Join(known, ", "))
		}
	}
	for i := range profiles {
		profiles[i].Holidays = append(append([]rights.Date{}, profiles[i].Holidays...), extraHolidays...)
		codes = append(codes, profiles[i].Code)
	}
	complaint := f.complaint
	if complaint == "" && f.contactName != "" {
		complaint = "Contact " + f.contactName
		if f.contactPhone != "" {
			complaint += " at " + f.contactPhone
		}
		complaint += "."
	}
	review := f.reviewHowTo
	if review == "" {
		review = "Ask in the app you used for this request (it sends $request-review), or contact the person below."
	}
	disagree := f.disagreeHowTo
	if disagree == "" {
		disagree = "Send your statement in the app you used for this request (a statement of disagreement through $correctionrequest), or write to the person below."
	}
	if !strings.Contains(f.owner, "/") {
		return nil, nil, usageErr("--records-owner is a reference such as Organization/records-office, got %q", f.owner)
	}
	r := rights.New(rights.Config{Loc: loc, Profiles: profiles, Owner: f.owner, OwnerDisplay: f.ownerName, StatementMaxWords: f.statementMaxWords,
		Contact: rights.Contact{Name: f.contactName, Phone: f.contactPhone, Complaint: complaint, ReviewHowTo: review, DisagreeHowTo: disagree}})
	return r, codes, nil
}

// overdueCmd lists the open requests past their due date: carta overdue [--json].
func overdueCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags("overdue", stderr)
	data := fs.String("data", envOr(getenv, "CARTA_DATA_DIR", "./carta-data"), "data directory of the server")
	tz := fs.String("timezone", envOr(getenv, "CARTA_TIMEZONE", "UTC"), "the zone the due dates are counted in")
	asJSON := fs.Bool("json", false, "print JSON lines instead of a table")
	if err := fs.Parse(args); err != nil {
		return err
	}
	loc, err := time.LoadLocation(*tz)
	if err != nil {
		return usageErr("--timezone %q: %v", *tz, err)
	}
	st, err := openStore(ctx, *data, getenv)
	if err != nil {
		return err
	}
	defer st.Close()
	today := rights.DateOf(time.Now(), loc)
	list, err := handlers.Overdue(ctx, st, today)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, o := range list {
			enc.Encode(o)
		}
		return nil
	}
	if len(list) == 0 {
		fmt.Fprintf(stdout, "no open request is past its due date (today is %s)\n", today)
		return nil
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TASK\tTYPE\tPATIENT\tSTATUS\tDUE\tDAYS LATE")
	for _, o := range list {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", o.Task, o.Type, o.Patient, o.Status, o.Due, o.DaysLate)
	}
	return w.Flush()
}
