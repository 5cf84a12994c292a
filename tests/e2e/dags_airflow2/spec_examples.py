# The specification's "Task with Kubernetes Executor Config" and "Queue-Based Executor Routing"
# examples, in the order they appear, copied as they stand. The only change: the indentation of the
# function and call bodies, which the specification's rendering lost (Python cannot parse it without).
from airflow import DAG
from airflow.operators.python import PythonOperator
from datetime import datetime

def my_task():
    print("Running on Kubernetes!")
    return "Task completed"

dag = DAG(
    'kubernetes_executor_example',
    start_date=datetime(2023, 1, 1),
    schedule_interval=None,
    catchup=False
)

# Task with custom executor config
k8s_task = PythonOperator(
    task_id='kubernetes_task',
    python_callable=my_task,
    executor_config={
        'KubernetesExecutor': {
            'namespace': 'custom-namespace',
            'image': 'custom-image:latest',
            'request_memory': '1Gi',
            'request_cpu': '500m',
            'limit_memory': '2Gi',
            'limit_cpu': '1000m',
            'labels': {'team': 'data-engineering'},
            'annotations': {'monitoring': 'enabled'},
            'env_vars': [
                {'name': 'CUSTOM_VAR', 'value': 'custom_value'}
            ],
            'secrets': [
                {
                    'deploy_type': 'env',
                    'deploy_target': 'DB_PASSWORD',
                    'secret': 'database-secret',
                    'key': 'password'
                }
            ],
            'volumes': [
                {
                    'name': 'data-volume',
                    'persistentVolumeClaim': {
                        'claimName': 'data-pvc'
                    }
                }
            ],
            'volume_mounts': [
                {
                    'name': 'data-volume',
                    'mountPath': '/data'
                }
            ],
            'node_selector': {'disktype': 'ssd'},
            'affinity': {
                'nodeAffinity': {
                    'requiredDuringSchedulingIgnoredDuringExecution': {
                        'nodeSelectorTerms': [{
                                'matchExpressions': [{
                                        'key': 'kubernetes.io/arch',
                                        'operator': 'In',
                                        'values': ['amd64']
                                }]
                        }]
                    }
                }
            },
            'tolerations': [
                {
                    'key': 'compute-type',
                    'operator': 'Equal',
                    'value': 'gpu',
                    'effect': 'NoSchedule'
                }
            ]
        }
    },
    dag=dag
)

# Tasks for LocalKubernetesExecutor with queue routing

# This task runs locally (default queue)
local_task = PythonOperator(
    task_id='local_task',
    python_callable=lambda: print("Running locally!"),
    dag=dag
)

# This task runs on Kubernetes (kubernetes queue)
k8s_task = PythonOperator(
    task_id='k8s_task',
    python_callable=lambda: print("Running on Kubernetes!"),
    queue='kubernetes', # Routes to KubernetesExecutor
    dag=dag
)

# Custom queue name (configure in airflow.cfg)
gpu_task = PythonOperator(
    task_id='gpu_task',
    python_callable=lambda: print("Running on GPU nodes!"),
    queue='gpu-queue', # Custom queue for GPU nodes
    executor_config={
        'KubernetesExecutor': {
            'namespace': 'gpu-namespace',
            'node_selector': {'accelerator': 'nvidia-gpu'},
            'tolerations': [
                {
                    'key': 'nvidia.com/gpu',
                    'operator': 'Exists',
                    'effect': 'NoSchedule'
                }
            ],
            'resources': {
                'limits': {
                    'nvidia.com/gpu': '1'
                }
            }
        }
    },
    dag=dag
)
