{{/* The release's full name, at most 63 characters. */}}
{{- define "lode.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "lode.labels" -}}
app.kubernetes.io/name: lode-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lode
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What the operator's pods are selected by. */}}
{{- define "lode.selector" -}}
app.kubernetes.io/name: lode-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lode.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lode.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "lode.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}
