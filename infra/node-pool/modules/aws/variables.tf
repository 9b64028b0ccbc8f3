variable "region" {
  description = "The cloud's region id."
  type        = string
}

variable "region_name" {
  description = "XPlane's name of the region (agent --region, tags)."
  type        = string
}

variable "service" {
  description = "Service the nodes serve."
  type        = string
}

variable "node_count" {
  description = "Number of instances."
  type        = number
}

variable "instance_type" {
  description = "Instance type."
  type        = string
}

variable "api_url" {
  description = "XPlane API URL the agents register with."
  type        = string
}

variable "bootstrap_token" {
  description = "Bootstrap token, written to the agent's env file by cloud-init."
  type        = string
  sensitive   = true
}

variable "agent_version" {
  description = "xplane version installed on the nodes."
  type        = string
  default     = "latest"
}

variable "security_group_ids" {
  description = "Security groups of the nodes."
  type        = list(string)
  default     = []
}

variable "key_name" {
  description = "SSH key pair name (null: none)."
  type        = string
  default     = null
}

variable "ami_id" {
  description = "AMI of the nodes (null: newest matching ami_name_filter)."
  type        = string
  default     = null
}

variable "ami_name_filter" {
  description = "AMI name pattern looked up when ami_id is null."
  type        = string
  default     = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
}

variable "ami_owners" {
  description = "Owners of the looked-up AMI."
  type        = list(string)
  default     = ["099720109477"]
}

variable "subnet_id" {
  description = "Subnet of the nodes (null: the default VPC's)."
  type        = string
  default     = null
}
