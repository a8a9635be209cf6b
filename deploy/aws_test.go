package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/storage/location"
)

// stringList is IAM's "one string or a list of strings".
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings: %v", err)
	}
	*l = many
	return nil
}

type iamPolicy struct {
	Version   string
	Statement []iamStatement
}

type iamStatement struct {
	Sid       string
	Effect    string
	Principal map[string]stringList `json:",omitempty"`
	Action    stringList
	Resource  stringList `json:",omitempty"`
	Condition map[string]map[string]stringList
}

// strictJSON decodes a file into out, refusing unknown fields and fields
// whose case differs from out's (AWS's names are case-sensitive).
func strictJSON(t *testing.T, path string, out any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var orig, round any
	back, _ := json.Marshal(out)
	_ = json.Unmarshal(b, &orig)
	_ = json.Unmarshal(back, &round)
	if k := missingKey(orig, round, ""); k != "" {
		t.Fatalf("%s: %s is not spelt as the API spells it", path, k)
	}
}

// missingKey finds an object key of a that b lacks, as a path.
func missingKey(a, b any, path string) string {
	switch a := a.(type) {
	case map[string]any:
		bm, _ := b.(map[string]any)
		for k, v := range a {
			bv, ok := bm[k]
			if !ok {
				return path + "." + k
			}
			if p := missingKey(v, bv, path+"."+k); p != "" {
				return p
			}
		}
	case []any:
		bl, _ := b.([]any)
		for i, v := range a {
			if i < len(bl) {
				if p := missingKey(v, bl[i], fmt.Sprintf("%s[%d]", path, i)); p != "" {
					return p
				}
			}
		}
	}
	return ""
}

func awsDir(t *testing.T) string { return filepath.Join(repoRoot(t), "deploy", "aws") }

func readPolicy(t *testing.T, name string) iamPolicy {
	t.Helper()
	var p iamPolicy
	strictJSON(t, filepath.Join(awsDir(t), "iam", name), &p)
	return p
}

// glob matches IAM's wildcards: * any run of characters (slashes too), ? one.
func glob(pattern, s string) bool {
	var re strings.Builder
	re.WriteString("^")
	for _, r := range pattern {
		switch r {
		case '*':
			re.WriteString(".*")
		case '?':
			re.WriteString(".")
		default:
			re.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	return regexp.MustCompile(re.String() + "$").MatchString(s)
}

// allows says whether p lets action reach resource, leaving conditions
// aside unless honour is given (which must say whether they hold).
func (p iamPolicy) allows(action, resource string, conditionsHold func(map[string]map[string]stringList) bool) bool {
	for _, s := range p.Statement {
		if s.Effect != "Allow" || !slices.ContainsFunc(s.Action, func(a string) bool { return glob(a, action) }) {
			continue
		}
		if !slices.ContainsFunc(s.Resource, func(r string) bool { return glob(r, resource) }) {
			continue
		}
		if len(s.Condition) > 0 && (conditionsHold == nil || !conditionsHold(s.Condition)) {
			continue
		}
		return true
	}
	return false
}

var bucketARN = regexp.MustCompile(`^arn:aws:s3:::([a-z0-9.-]+)$`)

// repository returns the bucket and prefix the archiver's policy is for.
func repository(t *testing.T) (bucket, prefix string) {
	t.Helper()
	p := readPolicy(t, "archiver.json")
	for _, s := range p.Statement {
		for _, r := range s.Resource {
			if m := bucketARN.FindStringSubmatch(r); m != nil && slices.Contains(s.Action, "s3:ListBucket") {
				bucket = m[1]
			}
			if slices.Contains(s.Action, "s3:GetObject") {
				prefix = strings.TrimSuffix(strings.TrimPrefix(r, "arn:aws:s3:::"+bucket+"/"), "/*")
			}
		}
	}
	if bucket == "" || prefix == "" {
		t.Fatalf("archiver.json: no bucket (%q) or prefix (%q) found", bucket, prefix)
	}
	return bucket, prefix
}

// checkRepoMatchesIAM checks that an s3 repository is the one the IAM
// policies are written for.
func checkRepoMatchesIAM(t *testing.T, where string, loc location.Location) {
	t.Helper()
	bucket, prefix := repository(t)
	if loc.S3.Bucket != bucket || strings.Trim(loc.S3.Prefix, "/") != prefix {
		t.Errorf("%s: repository s3://%s/%s, but the IAM policies are for s3://%s/%s", where, loc.S3.Bucket, loc.S3.Prefix, bucket, prefix)
	}
}

// documentedGrants reads the table "What each role can reach" in
// deploy/aws/README.md: policy file to the set of "action resource".
func documentedGrants(t *testing.T) (map[string]map[string]bool, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(awsDir(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	bucket, _ := repository(t)
	_, table, ok := strings.Cut(string(b), "| role | policy | actions | resources | why |")
	if !ok {
		t.Fatal("README.md: no table | role | policy | actions | resources | why |")
	}
	grants, roles := map[string]map[string]bool{}, map[string]string{}
	tick := regexp.MustCompile("`([^`]+)`")
	var role, policy string
	for _, line := range strings.Split(table, "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) < 6 {
			t.Fatalf("README.md: row %q", line)
		}
		if r := strings.TrimSpace(cells[1]); r != "" {
			role = r
		}
		if m := tick.FindStringSubmatch(cells[2]); m != nil {
			policy = strings.TrimPrefix(m[1], "iam/")
			roles[policy] = role
		}
		if grants[policy] == nil {
			grants[policy] = map[string]bool{}
		}
		for _, a := range tick.FindAllStringSubmatch(cells[3], -1) {
			for _, r := range tick.FindAllStringSubmatch(cells[4], -1) {
				res := r[1]
				switch {
				case res == bucket:
					res = "arn:aws:s3:::" + bucket
				case !strings.HasPrefix(res, "arn:") && res != "*":
					res = "arn:aws:s3:::" + bucket + "/" + res
				}
				grants[policy][a[1]+" "+res] = true
			}
		}
	}
	return grants, roles
}

// TestIAMPoliciesAreDocumented checks every policy: valid JSON in IAM's
// grammar, Allow only, no wildcard actions, and exactly the actions on
// exactly the resources that README.md's table documents.
func TestIAMPoliciesAreDocumented(t *testing.T) {
	documented, roles := documentedGrants(t)
	files, _ := filepath.Glob(filepath.Join(awsDir(t), "iam", "*.json"))
	readme, _ := os.ReadFile(filepath.Join(awsDir(t), "README.md"))
	for _, f := range files {
		name := filepath.Base(f)
		p := readPolicy(t, name)
		if p.Version != "2012-10-17" {
			t.Errorf("%s: Version %q", name, p.Version)
		}
		sids := map[string]bool{}
		got := map[string]bool{}
		for _, s := range p.Statement {
			if s.Sid == "" || sids[s.Sid] || !regexp.MustCompile(`^[A-Za-z0-9]+$`).MatchString(s.Sid) {
				t.Errorf("%s: Sid %q: want a unique alphanumeric Sid", name, s.Sid)
			}
			sids[s.Sid] = true
			if s.Effect != "Allow" {
				t.Errorf("%s %s: Effect %q", name, s.Sid, s.Effect)
			}
			for _, a := range s.Action {
				if !regexp.MustCompile(`^[a-z0-9-]+:[A-Za-z]+$`).MatchString(a) {
					t.Errorf("%s %s: action %q: want service:Action, no wildcards", name, s.Sid, a)
				}
				for _, r := range s.Resource {
					got[a+" "+r] = true
				}
			}
		}
		if strings.HasSuffix(name, "-trust.json") {
			for _, s := range p.Statement {
				if len(s.Resource) > 0 || !slices.Equal(s.Action, []string{"sts:AssumeRole"}) || len(s.Principal["Service"]) != 1 || s.Condition["StringEquals"]["aws:SourceAccount"] == nil {
					t.Errorf("%s %s: a trust policy lets one service assume the role (sts:AssumeRole), for this account only", name, s.Sid)
				}
			}
			if !strings.Contains(string(readme), "file://iam/"+name) {
				t.Errorf("%s: no command in README.md uses it", name)
			}
			continue
		}
		want, ok := documented[name]
		if !ok {
			t.Errorf("%s is not in README.md's table of what each role can reach", name)
			continue
		}
		for g := range got {
			if !want[g] {
				t.Errorf("%s (%s) grants %s, which README.md does not document", name, roles[name], g)
			}
		}
		for g := range want {
			if !got[g] {
				t.Errorf("README.md documents %s for %s, which %s does not grant", g, roles[name], name)
			}
		}
		delete(documented, name)
	}
	for name := range documented {
		t.Errorf("README.md documents %s, which does not exist", name)
	}
	for _, cmd := range []string{"archive", "prune", "restore"} {
		if !slices.Contains(mapsValues(roles), roleFor(cmd)) {
			t.Errorf("walship %s runs as %s, which README.md does not document", cmd, roleFor(cmd))
		}
	}
}

func mapsValues(m map[string]string) []string {
	var v []string
	for _, x := range m {
		v = append(v, x)
	}
	return v
}

type taskDefinition struct {
	Family                  string   `json:"family"`
	TaskRoleArn             string   `json:"taskRoleArn"`
	ExecutionRoleArn        string   `json:"executionRoleArn"`
	NetworkMode             string   `json:"networkMode"`
	RequiresCompatibilities []string `json:"requiresCompatibilities"`
	RuntimePlatform         struct {
		OperatingSystemFamily string `json:"operatingSystemFamily"`
		CPUArchitecture       string `json:"cpuArchitecture"`
	} `json:"runtimePlatform"`
	CPU                  string `json:"cpu"`
	Memory               string `json:"memory"`
	ContainerDefinitions []struct {
		Name        string   `json:"name"`
		Image       string   `json:"image"`
		Essential   bool     `json:"essential"`
		Command     []string `json:"command"`
		Environment []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"environment"`
		Secrets []struct {
			Name      string `json:"name"`
			ValueFrom string `json:"valueFrom"`
		} `json:"secrets"`
		ReadonlyRootFilesystem bool   `json:"readonlyRootFilesystem"`
		User                   string `json:"user"`
		LinuxParameters        struct {
			Capabilities struct {
				Drop []string `json:"drop"`
			} `json:"capabilities"`
		} `json:"linuxParameters"`
		StopTimeout      int `json:"stopTimeout"`
		LogConfiguration struct {
			LogDriver string            `json:"logDriver"`
			Options   map[string]string `json:"options"`
		} `json:"logConfiguration"`
	} `json:"containerDefinitions"`
}

// fargateSizes are Fargate's CPU units and the memory (MiB) each allows.
func fargateMemoryOK(cpu, mem int) bool {
	switch cpu {
	case 256:
		return mem == 512 || mem == 1024 || mem == 2048
	case 512:
		return mem >= 1024 && mem <= 4096 && mem%1024 == 0
	case 1024:
		return mem >= 2048 && mem <= 8192 && mem%1024 == 0
	case 2048:
		return mem >= 4096 && mem <= 16384 && mem%1024 == 0
	case 4096:
		return mem >= 8192 && mem <= 30720 && mem%1024 == 0
	}
	return false
}

// ecrRepoARN is the ARN of repo in the registry at host
// (ACCOUNT.dkr.ecr.REGION.amazonaws.com).
func ecrRepoARN(host, repo string) string {
	p := strings.Split(host, ".")
	if len(p) < 4 {
		return ""
	}
	return "arn:aws:ecr:" + p[3] + ":" + p[0] + ":repository/" + repo
}

var roleARN = regexp.MustCompile(`^arn:aws:iam::(\d{12}):role/([\w+=,.@-]+)$`)

func accountOf(arn string) string {
	if m := roleARN.FindStringSubmatch(arn); m != nil {
		return m[1]
	}
	return ""
}

func roleName(arn string) string {
	if m := roleARN.FindStringSubmatch(arn); m != nil {
		return m[2]
	}
	return ""
}

func readTasks(t *testing.T) map[string]taskDefinition {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(awsDir(t), "ecs", "*.json"))
	tasks := map[string]taskDefinition{}
	for _, f := range files {
		var td taskDefinition
		strictJSON(t, f, &td)
		tasks[strings.TrimSuffix(filepath.Base(f), ".json")] = td
	}
	if len(tasks) < 3 {
		t.Fatalf("found %d task definitions", len(tasks))
	}
	return tasks
}

// TestECSTasks checks the task definitions: Fargate sizes, the image, the
// command and its environment, the role each command needs, secrets and
// logs the execution role reaches, and a stop within Fargate's limit.
func TestECSTasks(t *testing.T) {
	execRole := readPolicy(t, "ecs-execution.json")
	for file, td := range readTasks(t) {
		where := "ecs/" + file + ".json"
		cpu, _ := strconv.Atoi(td.CPU)
		mem, _ := strconv.Atoi(td.Memory)
		if td.Family != "walship-"+file || td.NetworkMode != "awsvpc" || !slices.Equal(td.RequiresCompatibilities, []string{"FARGATE"}) || !fargateMemoryOK(cpu, mem) {
			t.Errorf("%s: want family walship-%s, awsvpc, FARGATE, and a Fargate size (cpu %s, memory %s)", where, file, td.CPU, td.Memory)
		}
		if len(td.ContainerDefinitions) != 1 {
			t.Errorf("%s: want one container", where)
			continue
		}
		c := td.ContainerDefinitions[0]
		if variant, _, err := ourImage(c.Image); err != nil || variant != "walship" {
			t.Errorf("%s: image %q: want the minimal walship image (%v)", where, c.Image, err)
		} else if host, rest, _ := strings.Cut(c.Image, "/"); !execRole.allows("ecr:BatchGetImage", ecrRepoARN(host, strings.Split(rest, ":")[0]), nil) {
			t.Errorf("%s: the execution role cannot pull %s", where, c.Image)
		}
		if !c.Essential || !c.ReadonlyRootFilesystem || c.User == "" || strings.HasPrefix(c.User, "0") || !slices.Equal(c.LinuxParameters.Capabilities.Drop, []string{"ALL"}) {
			t.Errorf("%s: want essential, a read-only root file system, a non-root user and capabilities dropped", where)
		}
		env := map[string]string{}
		for _, e := range c.Environment {
			env[e.Name] = e.Value
		}
		for _, s := range c.Secrets {
			env[s.Name] = "secret"
			if !execRole.allows("secretsmanager:GetSecretValue", s.ValueFrom, nil) {
				t.Errorf("%s: the execution role cannot read the secret %s", where, s.ValueFrom)
			}
		}
		inv, ok := checkRun(t, where, c.Command, env)
		if !ok {
			continue
		}
		if loc, err := location.Parse(env["WALSHIP_REPO"]); err == nil {
			checkRepoMatchesIAM(t, where, loc)
		}
		if got, want := roleName(td.TaskRoleArn), roleFor(inv.command); got != want {
			t.Errorf("%s: walship %s runs as %s, want %s", where, inv.command, got, want)
		}
		if roleName(td.ExecutionRoleArn) != "walship-ecs-execution" {
			t.Errorf("%s: execution role %s", where, td.ExecutionRoleArn)
		}
		lc := c.LogConfiguration
		if lc.LogDriver != "awslogs" || !execRole.allows("logs:PutLogEvents", "arn:aws:logs:"+lc.Options["awslogs-region"]+":"+accountOf(td.ExecutionRoleArn)+":log-group:"+lc.Options["awslogs-group"]+":log-stream:x", nil) {
			t.Errorf("%s: the execution role cannot write the log group %s", where, lc.Options["awslogs-group"])
		}
		if c.StopTimeout < 2 || c.StopTimeout > 120 {
			t.Errorf("%s: stopTimeout %d: Fargate allows 2 to 120 s", where, c.StopTimeout)
		}
		if inv.command == "archive" {
			if inv.values["max-duration"] == "" && inv.values["until-caught-up"] != "true" {
				t.Errorf("%s: a scheduled archiver must be bounded (--max-duration or --until-caught-up)", where)
			}
			if stop := walshipCLI(t).duration(t, inv, "stop-timeout"); time.Duration(c.StopTimeout)*time.Second <= stop {
				t.Errorf("%s: stopTimeout %ds must exceed --stop-timeout %s", where, c.StopTimeout, stop)
			}
		}
	}
}

type scheduleInput struct {
	Name                       string
	Description                string
	ScheduleExpression         string
	ScheduleExpressionTimezone string
	State                      string
	FlexibleTimeWindow         struct{ Mode string }
	Target                     struct {
		Arn           string
		RoleArn       string
		EcsParameters struct {
			TaskDefinitionArn    string
			TaskCount            int
			LaunchType           string
			PlatformVersion      string
			NetworkConfiguration struct {
				AwsvpcConfiguration struct {
					Subnets        []string
					SecurityGroups []string
					AssignPublicIp string
				} `json:"awsvpcConfiguration"`
			}
		}
		RetryPolicy struct {
			MaximumRetryAttempts     int
			MaximumEventAgeInSeconds int
		}
	}
}

var (
	rateExpr = regexp.MustCompile(`^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$`)
	cronExpr = regexp.MustCompile(`^cron\((\S+ \S+ \S+ \S+ \S+ \S+)\)$`)
)

// TestSchedules checks the EventBridge Scheduler inputs: valid expressions,
// a task definition that exists, and a scheduler role that may run it and
// pass it its roles, and nothing else.
func TestSchedules(t *testing.T) {
	tasks := readTasks(t)
	sched := readPolicy(t, "scheduler.json")
	files, _ := filepath.Glob(filepath.Join(awsDir(t), "schedules", "*.json"))
	if len(files) != len(tasks) {
		t.Errorf("%d schedules for %d tasks", len(files), len(tasks))
	}
	for _, f := range files {
		var s scheduleInput
		strictJSON(t, f, &s)
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		where := "schedules/" + filepath.Base(f)
		var every time.Duration
		if m := rateExpr.FindStringSubmatch(s.ScheduleExpression); m != nil {
			n, _ := strconv.Atoi(m[1])
			every = time.Duration(n) * map[string]time.Duration{"minute": time.Minute, "hour": time.Hour, "day": 24 * time.Hour}[strings.TrimSuffix(m[2], "s")]
		} else if m := cronExpr.FindStringSubmatch(s.ScheduleExpression); m == nil || (strings.Fields(m[1])[2] != "?") == (strings.Fields(m[1])[4] != "?") {
			t.Errorf("%s: ScheduleExpression %q: want rate(...) or cron(min hour dom month dow year) with ? in exactly one of dom and dow", where, s.ScheduleExpression)
		}
		if s.Name != "walship-"+name || s.ScheduleExpressionTimezone != "UTC" || s.FlexibleTimeWindow.Mode != "OFF" || s.State != "ENABLED" {
			t.Errorf("%s: want Name walship-%s, UTC, no flexible window, ENABLED", where, name)
		}
		ep := s.Target.EcsParameters
		family := strings.TrimPrefix(regexp.MustCompile(`task-definition/[^:]+`).FindString(ep.TaskDefinitionArn), "task-definition/")
		td, ok := tasks[strings.TrimPrefix(family, "walship-")]
		if !ok || td.Family != family {
			t.Errorf("%s: task definition %s is not in ecs/", where, ep.TaskDefinitionArn)
			continue
		}
		if ep.LaunchType != "FARGATE" || ep.TaskCount != 1 || len(ep.NetworkConfiguration.AwsvpcConfiguration.Subnets) == 0 {
			t.Errorf("%s: want one Fargate task in a subnet", where)
		}
		if roleName(s.Target.RoleArn) != "walship-scheduler" {
			t.Errorf("%s: RoleArn %s, want the walship-scheduler role", where, s.Target.RoleArn)
		}
		onCluster := func(c map[string]map[string]stringList) bool {
			return slices.Equal(c["ArnEquals"]["ecs:cluster"], []string{s.Target.Arn}) && len(c) == 1
		}
		if !sched.allows("ecs:RunTask", ep.TaskDefinitionArn, onCluster) {
			t.Errorf("%s: scheduler.json does not let it run %s on %s", where, ep.TaskDefinitionArn, s.Target.Arn)
		}
		toECS := func(c map[string]map[string]stringList) bool {
			return slices.Equal(c["StringEquals"]["iam:PassedToService"], []string{"ecs-tasks.amazonaws.com"})
		}
		for _, r := range []string{td.TaskRoleArn, td.ExecutionRoleArn} {
			if !sched.allows("iam:PassRole", r, toECS) {
				t.Errorf("%s: scheduler.json does not let it pass %s to ECS", where, r)
			}
		}
		// A bounded archiver must stop before the next run is due.
		if c := td.ContainerDefinitions[0]; len(c.Command) > 0 && c.Command[0] == "archive" && every > 0 {
			inv, err := walshipCLI(t).check(c.Command)
			if d, perr := time.ParseDuration(inv.values["max-duration"]); err == nil && perr == nil && d >= every {
				t.Errorf("%s: archive --max-duration %s runs into the next run, every %s", where, d, every)
			}
		}
	}
}

// TestAWSReadmeCommands checks that the setup commands name files that
// exist (expanding the README's for loops).
func TestAWSReadmeCommands(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(awsDir(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	loop := regexp.MustCompile(`for (\w+) in ([^;]+); do`)
	ref := regexp.MustCompile(`file://(\S+)`)
	var vars map[string][]string
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if m := loop.FindStringSubmatch(line); m != nil {
			vars = map[string][]string{m[1]: strings.Fields(m[2])}
		}
		if strings.TrimSpace(line) == "done" {
			vars = nil
		}
		for _, m := range ref.FindAllStringSubmatch(line, -1) {
			paths := []string{m[1]}
			for v, values := range vars {
				if strings.Contains(m[1], "$"+v) {
					paths = nil
					for _, x := range values {
						paths = append(paths, strings.ReplaceAll(m[1], "$"+v, x))
					}
				}
			}
			for _, p := range paths {
				n++
				if _, err := os.Stat(filepath.Join(awsDir(t), p)); err != nil {
					t.Errorf("README.md: file://%s: %v", p, err)
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("README.md: only %d file:// references found", n)
	}
}
