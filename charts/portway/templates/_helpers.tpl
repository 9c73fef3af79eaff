{{/*
Names are fixed: the operator, the ClusterRoles and the admission policy refer to each other by
them (BRIEF contract 3), and one Portway serves a whole cluster.
*/}}
{{- define "portway.operatorName" -}}portway-operator{{- end }}
{{- define "portway.agentClusterRole" -}}portway-agent{{- end }}
{{- define "portway.agentStatusClusterRole" -}}portway-agent-status{{- end }}
{{- define "portway.cleanupName" -}}portway-cleanup{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "portway.labels" -}}
app.kubernetes.io/name: portway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: portway
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of the operator pods. */}}
{{- define "portway.operatorSelector" -}}
app.kubernetes.io/name: portway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* An image reference from {repository, tag, digest}: the digest wins over the tag. */}}
{{- define "portway.image" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag | default "latest" }}
{{- end -}}
{{- end }}
